"""`artifact-search`: one entry point for both services and their operations.

Subcommands: `api` (query service), `indexer` (Kafka consumer), `alerts` (saved-search
alerts), `bootstrap` (topics, indices, aliases; idempotent), `produce` (publish events from a
JSON Lines file), `replay` (rebuild the index from the topics into a new index version and
swap the aliases), `backfill-prefect` (publish an existing Prefect server's database as
events), `sync-prefect` (keep the topics in step with a live Prefect: its database by change
data capture, or its API). Settings come from the environment (see README); invalid settings
stop the command with a message naming the variable. Logs are JSON lines on stderr; results
go to stdout. Generated demo data is a development tool, not a subcommand: `python -m datagen`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.config import (
    AlertsSettings,
    BackfillSettings,
    ElasticsearchSettings,
    IndexerSettings,
    KafkaSettings,
    LoggingSettings,
    QuerySettings,
    SyncSettings,
)
from services.logging import configure_logging, correlation, quiet_clients
from services.telemetry import SERVICE_NAMES, TelemetrySettings, tracing

log = logging.getLogger("artifact-search")

ENTITY_NAMES = ("flow", "deployment", "flow_run", "task_run", "artifact")

ENV_HELP = """\
settings come from environment variables (README, "Configuration"):
  KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC_PREFIX, KAFKA_GROUP_ID, KAFKA_SECURITY_PROTOCOL, ...
  ELASTICSEARCH_URL, ELASTICSEARCH_INDEX_PREFIX, ELASTICSEARCH_API_KEY, ...
  INDEXER_*, QUERY_*, ALERTS_*, BACKFILL_*, SYNC_*, LOG_LEVEL (INFO), LOG_FORMAT (json|text)
  OTEL_EXPORTER_OTLP_ENDPOINT: traces of api, indexer, alerts, sync-prefect (off when unset)
"""


def _settings(cls: type[Any]) -> Any:
    """Build a settings class from the environment, or exit naming the bad variables.

    The message never echoes a value (it could be a secret).
    """
    prefix = cls.model_config.get("env_prefix", "")
    try:
        return cls()
    except ValidationError as exc:
        lines = [
            f"  {prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        sys.exit("invalid configuration:\n" + "\n".join(lines))
    except SettingsError as exc:  # e.g. a list-valued variable that is not JSON
        match = re.search(r'field "([^"]+)"', str(exc))
        name = f"{prefix}{match.group(1).upper()}" if match else cls.__name__
        sys.exit(f"invalid configuration:\n  {name}: not valid JSON for this setting")


def _cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from artifact_search.api import create_api

    query = _settings(QuerySettings)
    app = create_api(query, _settings(ElasticsearchSettings))
    uvicorn.run(
        app,
        host=args.host or query.host,
        port=args.port or query.port,
        log_level="warning",
        log_config=None,  # uvicorn's loggers propagate to the JSON handler
        workers=1,
    )


def _cmd_indexer(_: argparse.Namespace) -> None:
    from indexer import metrics
    from indexer.app import Indexer
    from indexer.runtime import GC_THRESHOLDS
    from services.health import HealthServer

    settings: IndexerSettings = _settings(IndexerSettings)
    indexer = Indexer(_settings(KafkaSettings), _settings(ElasticsearchSettings), settings)
    # A step allocates tens of thousands of short-lived objects: with the default thresholds
    # the cyclic GC runs hundreds of times a second and rescans everything alive (about 20 %
    # of a step's CPU, measured). Objects alive after start-up are frozen out of its scans.
    gc.set_threshold(*GC_THRESHOLDS)
    if not settings.metrics_port:
        asyncio.run(indexer.app().run())
        return
    health = HealthServer(settings.metrics_host, settings.metrics_port)
    app = indexer.app(first=[health.start])  # alive while the parents are caught up

    async def ready() -> None:
        gc.freeze()
        health.ready = True
        metrics.READY.set(1)

    async def not_ready() -> None:
        health.ready = False
        metrics.READY.set(0)

    app.after_startup(ready)
    app.on_shutdown(not_ready)
    app.after_shutdown(health.stop)
    asyncio.run(app.run())


def _cmd_alerts(_: argparse.Namespace) -> None:
    from alerts.app import AlertsService
    from services.health import HealthServer

    settings: AlertsSettings = _settings(AlertsSettings)
    service = AlertsService(_settings(KafkaSettings), _settings(ElasticsearchSettings), settings)

    async def run() -> None:
        health = HealthServer(settings.metrics_host, settings.metrics_port)
        if settings.metrics_port:
            await health.start()
        service_task = asyncio.create_task(service.run())
        started = asyncio.create_task(service.started.wait())
        try:
            await asyncio.wait([service_task, started], return_when=asyncio.FIRST_COMPLETED)
            health.ready = service.started.is_set() and not service_task.done()
            await service_task
        finally:
            started.cancel()
            health.ready = False
            if settings.metrics_port:
                await health.stop()

    asyncio.run(run())


def _cmd_replay(args: argparse.Namespace) -> None:
    from indexer.replay import replay
    from services.errors import PermanentError

    kafka, es, indexer = (
        _settings(KafkaSettings),
        _settings(ElasticsearchSettings),
        _settings(IndexerSettings),
    )
    try:
        result = asyncio.run(
            replay(
                kafka,
                es,
                indexer,
                batch_size=args.batch_size,
                keep_old=args.keep_old,
                shards=args.shards,
                replicas=args.replicas,
            )
        )
    except PermanentError as exc:
        sys.exit(f"replay failed (aliases unchanged): {exc}")
    poison = sum(result.poison.values())
    print(
        f"replayed {result.records} records ({result.events} events, {poison} poison skipped"
        f"{': ' + str(dict(result.poison)) if poison else ''}) into version {result.version} "
        f"in {result.seconds:.1f}s"
    )
    print(f"aliases now on: {', '.join(result.new_indices)}")
    if result.deleted:
        print(f"deleted: {', '.join(result.deleted)}")
    elif result.old_indices:
        print(f"kept: {', '.join(result.old_indices)}")


def _cmd_backfill(args: argparse.Namespace) -> None:
    from services.backfill import backfill

    settings: BackfillSettings = _settings(BackfillSettings)
    dsn = args.dsn or (
        settings.postgres_dsn.get_secret_value() if settings.postgres_dsn is not None else None
    )
    if not dsn:
        sys.exit("backfill-prefect needs --dsn or BACKFILL_POSTGRES_DSN")
    entities = tuple(e.strip() for e in args.entities.split(",") if e.strip())
    unknown = sorted(set(entities) - set(ENTITY_NAMES))
    if unknown:
        sys.exit(
            f"--entities: unknown {', '.join(unknown)} (choose from {', '.join(ENTITY_NAMES)})"
        )
    checkpoint = args.checkpoint if args.checkpoint is not None else settings.checkpoint
    result = asyncio.run(
        backfill(
            _settings(KafkaSettings),
            dsn,
            checkpoint_path=Path(checkpoint) if checkpoint else None,
            chunk_size=args.chunk_size or settings.chunk_size,
            max_events_per_second=(
                settings.max_events_per_second
                if args.max_events_per_second is None
                else args.max_events_per_second
            ),
            entities=entities,
            restart=args.restart,
        )
    )
    if result.resumed_from:
        print(f"resumed after {result.resumed_from[0]} {result.resumed_from[1] or '(start)'}")
    per_table = ", ".join(f"{t} {n}" for t, n in result.published.items()) or "nothing"
    print(
        f"published {sum(result.published.values())} events ({per_table}) in "
        f"{result.seconds:.1f}s; {result.total_published} in total; "
        f"{'complete' if result.complete else 'incomplete'}"
    )


def _cmd_sync(args: argparse.Namespace) -> None:
    from artifact_search.sync import run_sync

    run_sync(args, _settings(KafkaSettings), _settings(SyncSettings))


async def _bootstrap() -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from services.contract import ENTITIES
    from services.es.admin import ensure_indices
    from services.es.client import make_es_client
    from services.es.indices import IndexNames
    from services.kafka import producer_kwargs

    kafka = _settings(KafkaSettings)
    es_settings = _settings(ElasticsearchSettings)
    admin = AIOKafkaAdminClient(**producer_kwargs(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [kafka.topic_for(e) for e in ENTITIES] + [kafka.dlq_topic]
        new = [
            NewTopic(t, kafka.partitions, kafka.replication_factor)
            for t in wanted
            if t not in existing
        ]
        if new:
            await admin.create_topics(new)
        print(f"topics: {len(new)} created, {len(wanted) - len(new)} already present")
    finally:
        await admin.close()
    es = make_es_client(es_settings)
    try:
        names = IndexNames(es_settings.index_prefix)
        created = await ensure_indices(
            es, names, es_settings.number_of_shards, es_settings.number_of_replicas
        )
        total = len(names.all_aliases()) + len(names.alerting_indices())
        print(f"indices: {len(created)} created, {total - len(created)} already present")
    finally:
        await es.close()


def _cmd_produce(args: argparse.Namespace) -> None:
    from services.kafka import publish_records

    records = []
    for number, line in enumerate(Path(args.file).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        item = orjson.loads(line)
        try:
            entity, key = item["entity"], item["entity_id"]
        except KeyError:
            sys.exit(f"line {number}: an event needs `entity` and `entity_id`")
        value = None if item.get("tombstone") else orjson.dumps(item)
        records.append((entity, str(key).encode(), value))
    asyncio.run(publish_records(_settings(KafkaSettings), records))
    print(f"published {len(records)} events")


def _bounded(kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    """An argparse type: a number of `kind` in [low, high], else a usage error."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < low or (high is not None and value > high) or value != value:
            upper = "" if high is None else f" and at most {high:g}"
            raise argparse.ArgumentTypeError(f"{text} must be at least {low:g}{upper}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_POSITIVE = _bounded(int, 1)
_NON_NEGATIVE = _bounded(int, 0)
_PORT = _bounded(int, 1, 65_535)
_RATE = _bounded(float, 0)
_PORT_OR_OFF = _bounded(int, 0, 65_535)


def _slot_name(text: str) -> str:
    """An argparse type: a replication slot name PostgreSQL accepts (room for a suffix)."""
    if not re.fullmatch(r"[a-z0-9_]{1,54}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: lowercase letters, digits, _ (1-54)")
    return text


def _sub(
    sub: Any, name: str, help_text: str, description: str, func: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by tests to check `--help`)."""
    parser = argparse.ArgumentParser(
        prog="artifact-search",
        description=__doc__.split("\n")[0],
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    api = _sub(
        sub,
        "api",
        "serve the Prefect-compatible query API under /api",
        "Serve Prefect 3.9.1's artifact endpoints under /api (uvicorn, one worker; scale with "
        "replicas). Probes: GET /api/health (liveness), GET /api/ready (readiness: "
        "Elasticsearch answers); Prometheus metrics at GET /metrics.",
        _cmd_api,
    )
    api.add_argument("--host", help="bind address (default QUERY_HOST, 127.0.0.1)")
    api.add_argument("--port", type=_PORT, help="port (default QUERY_PORT, 4200)")
    _sub(
        sub,
        "indexer",
        "consume lifecycle events into Elasticsearch",
        "Consume the five entity topics with consumer group KAFKA_GROUP_ID and keep the "
        "Elasticsearch documents current; poison records go to the dead-letter topic. "
        "Serves /metrics, /livez and /readyz on INDEXER_METRICS_HOST:INDEXER_METRICS_PORT "
        "(port 0 disables it). Stops gracefully on SIGTERM (the batch in flight is not "
        "committed and is re-applied by the next owner).",
        _cmd_indexer,
    )
    _sub(
        sub,
        "alerts",
        "evaluate saved searches on the indexer's change feed and publish alerts",
        "Consume the indexer's change feed (KAFKA_TOPIC_CHANGES; run the indexer with "
        "INDEXER_PUBLISH_CHANGES=true) with consumer group ALERTS_GROUP_ID, evaluate every "
        "saved search on each batch of changed artifacts, publish each new match once to "
        "KAFKA_TOPIC_ALERTS and POST it to the saved search's webhook (retries, then "
        "KAFKA_TOPIC_ALERTS_DLQ). Serves /metrics, /livez and /readyz on "
        "ALERTS_METRICS_HOST:ALERTS_METRICS_PORT (port 0 disables it).",
        _cmd_alerts,
    )
    _sub(
        sub,
        "bootstrap",
        "create topics, indices and aliases (idempotent)",
        "Create the five entity topics and the dead-letter topic (KAFKA_PARTITIONS, "
        "KAFKA_REPLICATION_FACTOR) and the three Elasticsearch aliases with their concrete "
        "indices (ELASTICSEARCH_NUMBER_OF_SHARDS/_REPLICAS). Whatever exists is left alone, so "
        "a second run changes nothing.",
        lambda _: asyncio.run(_bootstrap()),
    )
    produce = _sub(
        sub,
        "produce",
        "publish events from a JSON Lines file of envelopes",
        "Publish v1 envelopes from a JSON Lines file, each to its entity's topic with "
        "entity_id as the key.",
        _cmd_produce,
    )
    produce.add_argument(
        "file", help="one envelope per line; {'tombstone': true, ...} for a null value"
    )
    replay = _sub(
        sub,
        "replay",
        "rebuild the index from the topics into a new index version and swap the aliases",
        "Rebuild the index from the topics: create <alias>-v<N+1> for the three aliases, "
        "consume every partition of the entity topics from the beginning up to the end "
        "offsets captured at start (group-less consumer: nothing is committed), apply the "
        "events with the indexer's engine (poison records are skipped and counted), then "
        "move the three aliases to the new indices in one atomic POST _aliases and delete the "
        "old indices. Readers are never without an index. On failure before the swap the new "
        "indices are deleted and nothing changes.\n\n"
        "Procedure: stop the indexer, run replay, start the indexer again: each replica "
        "resumes from its state store and, seeing the new control index, rewrites its "
        "partitions once (README, 'Upgrade, reindex').",
        _cmd_replay,
    )
    replay.add_argument(
        "--batch-size",
        type=_POSITIVE,
        default=None,
        help="records per engine batch (default INDEXER_MAX_BATCH, 2000)",
    )
    replay.add_argument(
        "--keep-old",
        action="store_true",
        help="keep the previous indices after the swap (rollback: move the aliases back)",
    )
    replay.add_argument(
        "--shards",
        type=_POSITIVE,
        default=None,
        help="primary shards of the new indices (default ELASTICSEARCH_NUMBER_OF_SHARDS)",
    )
    replay.add_argument(
        "--replicas",
        type=_NON_NEGATIVE,
        default=None,
        help="replicas of the new indices (default ELASTICSEARCH_NUMBER_OF_REPLICAS)",
    )
    backfill = _sub(
        sub,
        "backfill-prefect",
        "publish an existing Prefect server's PostgreSQL database as events",
        "Read flows, deployments, flow runs, task runs and artifacts from a Prefect 3.x "
        "PostgreSQL database (keyset pagination on id, in dependency order) and publish one "
        "upsert per row (version = microseconds of `updated`). Resumable: the checkpoint file "
        "holds the last (table, id) acknowledged by Kafka; a rerun continues after it. "
        "Only database mode is implemented: reading through Prefect's REST API is not "
        "supported.",
        _cmd_backfill,
    )
    backfill.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL DSN of the Prefect database, postgresql:// or postgresql+asyncpg:// "
        "(default BACKFILL_POSTGRES_DSN; prefer the variable: arguments are visible in ps)",
    )
    backfill.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file; empty string disables it (default BACKFILL_CHECKPOINT, "
        "prefect-backfill.checkpoint.json)",
    )
    backfill.add_argument(
        "--chunk-size",
        type=_POSITIVE,
        default=None,
        help="rows per keyset page and per checkpoint (default BACKFILL_CHUNK_SIZE, 1000)",
    )
    backfill.add_argument(
        "--max-events-per-second",
        type=_RATE,
        default=None,
        help="rate limit, 0 = unlimited (default BACKFILL_MAX_EVENTS_PER_SECOND, 0)",
    )
    backfill.add_argument(
        "--entities",
        default=",".join(ENTITY_NAMES),
        help=f"comma-separated tables to publish (default {','.join(ENTITY_NAMES)})",
    )
    backfill.add_argument(
        "--restart",
        action="store_true",
        help="ignore an existing checkpoint and start from the first row",
    )
    sync = _sub(
        sub,
        "sync-prefect",
        "keep the topics in step with a live Prefect (its database, or its API)",
        "Change data capture from Prefect 3.x's PostgreSQL database (wal_level=logical; a "
        "role with REPLICATION and SELECT on the tables): creates the publication and the "
        "replication slot when missing, publishes a snapshot taken consistently with the "
        "slot (progress on stderr), then streams every committed change of flow, "
        "deployment, flow_run, task_run and artifact as upsert/delete events (version = "
        "2^62 + the commit LSN). The slot's position advances only after Kafka acknowledged "
        "(acks=all, idempotent): a restart resumes with no loss. Runs until SIGTERM. "
        "Metrics (lag, events/s) on SYNC_METRICS_HOST:SYNC_METRICS_PORT/metrics. "
        "API mode, for a Prefect without database access (Prefect Cloud): --api-url "
        "instead of --dsn; subscribes to Prefect's event stream, reads the changed "
        "entities from the REST API, and reconciles with a paged listing every "
        "--reconcile-interval seconds (catching missed events and deleted artifacts); "
        "its checkpoint is a SQLite file (--state-file, default SYNC_API_STATE_FILE, "
        "prefect-sync-api.sqlite).",
        _cmd_sync,
    )
    sync.add_argument(
        "--api-url",
        default=None,
        help="Prefect's API URL, e.g. https://api.prefect.cloud/api/accounts/<a>/workspaces/<w> "
        "or http://host:4200/api (default SYNC_API_URL): selects the API mode",
    )
    sync.add_argument(
        "--api-key",
        default=None,
        help="Prefect Cloud API key (default SYNC_API_KEY; prefer the variable: arguments "
        "are visible in ps)",
    )
    sync.add_argument(
        "--auth-string",
        default=None,
        help="user:password of a self-hosted server's PREFECT_SERVER_API_AUTH_STRING "
        "(default SYNC_API_AUTH_STRING; prefer the variable)",
    )
    sync.add_argument(
        "--requests-per-second",
        type=_bounded(float, 0.1, 10_000),
        default=None,
        help="API mode: most requests per second to Prefect's API (default 20)",
    )
    sync.add_argument(
        "--reconcile-interval",
        type=_bounded(float, 1, 86_400),
        default=None,
        help="API mode: seconds between reconcile passes (default 300)",
    )
    sync.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL DSN of the Prefect database (default SYNC_POSTGRES_DSN; prefer the "
        "variable: arguments are visible in ps)",
    )
    sync.add_argument(
        "--slot", type=_slot_name, default=None, help="replication slot (default artifact_search)"
    )
    sync.add_argument("--publication", default=None, help="publication (default artifact_search)")
    sync.add_argument(
        "--state-file",
        default=None,
        help="where the bridge records that its snapshot is out (default SYNC_STATE_FILE, "
        "prefect-sync.state.json; keep it on a volume)",
    )
    sync.add_argument(
        "--recreate-slot",
        action="store_true",
        help="drop and create the slot again and publish a new snapshot: the way back after "
        "the slot was dropped or invalidated",
    )
    sync.add_argument(
        "--drop-slot",
        action="store_true",
        help="drop the slot and the state file, then exit (retiring the bridge: an unused "
        "slot makes PostgreSQL keep WAL)",
    )
    sync.add_argument(
        "--max-in-flight",
        type=_bounded(int, 1, 1_000_000),
        default=None,
        help="events sent and not yet acknowledged before reading pauses (default 10000)",
    )
    sync.add_argument(
        "--snapshot-chunk",
        type=_bounded(int, 1, 100_000),
        default=None,
        help="rows per snapshot read (default 1000)",
    )
    sync.add_argument(
        "--metrics-port",
        type=_PORT_OR_OFF,
        default=None,
        help="port of /metrics, /livez, /readyz; 0 disables (default SYNC_METRICS_PORT, 9465)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `artifact-search` command."""
    args = build_parser().parse_args(argv)
    logs: LoggingSettings = _settings(LoggingSettings)
    if logs.format == "json":
        configure_logging(logs.level)
    else:
        logging.basicConfig(level=logs.level, format="%(levelname)s %(name)s: %(message)s")
        quiet_clients()
    # the deployables are traced when an OTLP endpoint is configured (services/telemetry.py)
    otel = _settings(TelemetrySettings) if args.command in SERVICE_NAMES else None
    with correlation(), tracing(args.command, otel):
        args.func(args)


if __name__ == "__main__":
    main()
