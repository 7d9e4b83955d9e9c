"""The `sync-prefect` command: settings and options -> a running bridge, until SIGTERM/SIGINT.

The composition root of the bridge: the CLI parses and builds the settings once (SYNC_*
with the flags on top); this module serves /metrics, /livez and /readyz (ready while
streaming) and runs the bridge of the mode asked for: change data capture with a DSN
(`services/sync/bridge.py`), Prefect's API with an API URL (`services/sync/api_bridge.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from services.config import KafkaSettings, SyncSettings
from services.errors import PermanentError
from services.sync.api_bridge import ApiBridge, ApiSyncOptions
from services.sync.bridge import Bridge, SyncOptions, drop_sync_slot
from services.sync.prefect_api import PrefectAuth

log = logging.getLogger("sync")


def options_from(settings: SyncSettings, *, recreate_slot: bool = False) -> SyncOptions:
    """The change data capture mode's options (flags are already in `settings`)."""
    return SyncOptions(
        slot=settings.slot,
        publication=settings.publication,
        schema=settings.schema_name,
        state_path=Path(settings.state_file) if settings.state_file else None,
        recreate_slot=recreate_slot,
        max_in_flight=settings.max_in_flight,
        snapshot_chunk=settings.snapshot_chunk,
    )


def api_options_from(settings: SyncSettings) -> ApiSyncOptions:
    """The API mode's options (flags are already in `settings`)."""
    api_url = settings.api_url
    assert api_url
    key = _secret(settings.api_key)
    auth_string = _secret(settings.api_auth_string)
    if key and auth_string:
        sys.exit("sync-prefect: give --api-key (Prefect Cloud) or --auth-string, not both")
    return ApiSyncOptions(
        api_url=api_url.rstrip("/"),
        auth=PrefectAuth(api_key=key or None, auth_string=auth_string or None),
        state_path=Path(settings.api_state_file) if settings.api_state_file else None,
        requests_per_second=settings.api_requests_per_second,
        reconcile_interval_s=settings.reconcile_interval_s,
        reconcile_full_every=settings.reconcile_full_every,
        reconcile_overlap_s=settings.reconcile_overlap_s,
    )


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


async def _serve(
    kafka: KafkaSettings, mode: str | ApiSyncOptions, options: SyncOptions, port: int, host: str
) -> int:
    from services.health import HealthServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = HealthServer(host, port) if port else None

    def ready(value: bool) -> None:
        if health is not None:
            health.ready = value

    if health is not None:
        await health.start()
    bridge: Bridge | ApiBridge
    if isinstance(mode, ApiSyncOptions):
        bridge = ApiBridge(kafka, mode, on_ready=ready)
    else:
        bridge = Bridge(kafka, mode, options, on_ready=ready)
    try:
        await bridge.run(stop)
    finally:
        if health is not None:
            await health.stop()
    return bridge.published


def run_sync(
    kafka: KafkaSettings, settings: SyncSettings, *, recreate_slot: bool, drop_slot: bool
) -> None:
    """Run `sync-prefect` (the command line's flags are in `settings`); exits with a message
    on a setup error."""
    dsn = _secret(settings.postgres_dsn)
    api_url = settings.api_url
    if dsn and api_url:
        sys.exit("sync-prefect: give a database DSN (CDC mode) or an API URL, not both")
    if not dsn and not api_url:
        sys.exit(
            "sync-prefect needs --dsn / SYNC_POSTGRES_DSN (a self-hosted Prefect's database) "
            "or --api-url / SYNC_API_URL (Prefect's API, e.g. Prefect Cloud)"
        )
    options = options_from(settings, recreate_slot=recreate_slot)
    mode: str | ApiSyncOptions = api_options_from(settings) if api_url else str(dsn)
    if drop_slot and not dsn:
        sys.exit("sync-prefect: --drop-slot belongs to the CDC mode (--dsn)")
    if drop_slot:
        dropped = asyncio.run(drop_sync_slot(str(dsn), options.slot))
        if options.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                options.state_path.unlink()
        print(f"slot {options.slot} {'dropped' if dropped else 'did not exist'}")
        return
    try:
        published = asyncio.run(
            _serve(kafka, mode, options, settings.metrics_port, settings.metrics_host)
        )
    except PermanentError as exc:
        log.error("sync-prefect stopped: %s", exc)
        sys.exit(f"sync-prefect: {exc}")
    print(f"stopped; published {published} events")
