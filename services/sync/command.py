"""The `sync-prefect` command: settings and options -> a running bridge, until SIGTERM/SIGINT.

The composition root of the bridge: the CLI parses, this module builds the settings
once, serves /metrics, /livez and /readyz (ready while streaming) and runs the bridge.
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
from services.sync.bridge import Bridge, SyncOptions, drop_sync_slot

log = logging.getLogger("sync")


def options_from(args: Any, settings: SyncSettings) -> SyncOptions:
    """Command-line options over the SYNC_* settings."""
    state_file = args.state_file if args.state_file is not None else settings.state_file
    return SyncOptions(
        slot=args.slot or settings.slot,
        publication=args.publication or settings.publication,
        schema=settings.schema_name,
        state_path=Path(state_file) if state_file else None,
        recreate_slot=bool(args.recreate_slot),
        max_in_flight=args.max_in_flight or settings.max_in_flight,
        snapshot_chunk=args.snapshot_chunk or settings.snapshot_chunk,
    )


async def _serve(kafka: KafkaSettings, dsn: str, options: SyncOptions, port: int, host: str) -> int:
    from indexer.health import HealthServer

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
    bridge = Bridge(kafka, dsn, options, on_ready=ready)
    try:
        await bridge.run(stop)
    finally:
        if health is not None:
            await health.stop()
    return bridge.published


def run_sync(args: Any, kafka: KafkaSettings, settings: SyncSettings) -> None:
    """Run `sync-prefect` with parsed arguments; exits with a message on a setup error."""
    dsn = args.dsn or (
        settings.postgres_dsn.get_secret_value() if settings.postgres_dsn is not None else None
    )
    if not dsn:
        sys.exit("sync-prefect needs --dsn or SYNC_POSTGRES_DSN")
    options = options_from(args, settings)
    if args.drop_slot:
        dropped = asyncio.run(drop_sync_slot(dsn, options.slot))
        if options.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                options.state_path.unlink()
        print(f"slot {options.slot} {'dropped' if dropped else 'did not exist'}")
        return
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    try:
        published = asyncio.run(_serve(kafka, dsn, options, port, settings.metrics_host))
    except PermanentError as exc:
        log.error("sync-prefect stopped: %s", exc)
        sys.exit(f"sync-prefect: {exc}")
    print(f"stopped; published {published} events")
