"""`artifact-search`: one entry point for both services and their operations.

Subcommands: `api` (query service), `indexer` (Kafka consumer), `alerts` (saved-search
alerts), `bootstrap` (topics, indices, aliases; idempotent), `produce` (publish events from a
JSON Lines file), `replay` (rebuild the index from the topics into a new index version and
swap the aliases), `backfill-prefect` (publish an existing Prefect server's database as
events), `sync-prefect` (keep the topics in step with a live Prefect: its database by change
data capture, or its API). Settings come from the environment (see README); invalid settings
stop the command with a message naming the variable. Logs are JSON lines on stderr; results
go to stdout. Generated demo data is a development tool, not a subcommand: `python -m datagen`.

The command line is pydantic-settings' (`CliApp`): each subcommand is a model whose fields
are its flags, its docstring its description. A flag that overrides a setting is declared
with `_flag`, which copies that setting's constraints from `services/config.py`, so the flag
and its variable share one rule; a bad value is a usage error naming the flag (exit 2)
before anything runs. The settings are then built from the environment with the flags given
on top (`_settings`).

The library builds an argparse parser; three of `CliSettingsSource`'s hooks shape it, as
argparse pieces of our own: the root parser (the program's description and the environment
epilog, which the library has no option for), `add_parser_method` (that epilog on every
subcommand) and a help formatter that drops the `(default: null)` the library appends to
every flag (a flag's default is its variable's, which its help names).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliPositionalArg,
    CliSettingsSource,
    CliSubCommand,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    get_subcommand,
)

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

PROG = "artifact-search"
ENTITY_NAMES = ("flow", "deployment", "flow_run", "task_run", "artifact")

ENV_HELP = """\
settings come from environment variables (README, "Configuration"):
  KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC_PREFIX, KAFKA_GROUP_ID, KAFKA_SECURITY_PROTOCOL, ...
  ELASTICSEARCH_URL, ELASTICSEARCH_INDEX_PREFIX, ELASTICSEARCH_API_KEY, ...
  INDEXER_*, QUERY_*, ALERTS_*, BACKFILL_*, SYNC_*, LOG_LEVEL (INFO), LOG_FORMAT (json|text)
  OTEL_EXPORTER_OTLP_ENDPOINT: traces of api, indexer, alerts, sync-prefect (off when unset)
"""

S = TypeVar("S", bound=BaseSettings)


def _settings(cls: type[S], **flags: Any) -> S:
    """Build a settings class from the environment with the flags given (not None) on top,
    or exit naming the bad variables.

    The flags passed the same constraints when the command line was parsed, so an error here
    is the environment's. The message never echoes a value (it could be a secret).
    """
    prefix = cls.model_config.get("env_prefix", "")
    try:
        return cls(**{name: value for name, value in flags.items() if value is not None})
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


def _flag(settings: type[BaseSettings], name: str, help_text: str, flag: str | None = None) -> Any:
    """A flag that overrides the setting `settings.name` for one run: the setting's
    constraints, no default of its own (None: the environment's value). `flag` spells the
    option when it is not the setting's name (`--dsn` for `postgres_dsn`)."""
    info = cast(FieldInfo, Field(default=None, description=help_text, validation_alias=flag))
    info.metadata = [*info.metadata, *settings.model_fields[name].metadata]
    return info


class _Command(BaseModel):
    """A subcommand: its fields are its flags, its docstring the description of its help."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__doc__:  # argparse prints a description as written, indentation included
            cls.__doc__ = inspect.cleandoc(cls.__doc__)

    def cli_cmd(self) -> None:
        """Run the subcommand (`CliApp.run_subcommand` calls this)."""
        raise NotImplementedError


class ApiCommand(_Command):
    """Serve Prefect 3.9.1's artifact endpoints under /api (uvicorn, one worker; scale with
    replicas). Probes: GET /api/health (liveness), GET /api/ready (readiness:
    Elasticsearch answers); Prometheus metrics at GET /metrics."""

    host: str | None = _flag(QuerySettings, "host", "bind address (default QUERY_HOST, 127.0.0.1)")
    port: int | None = _flag(QuerySettings, "port", "port (default QUERY_PORT, 4200)")

    def cli_cmd(self) -> None:
        import uvicorn

        from artifact_search.api import create_api

        query = _settings(QuerySettings, host=self.host, port=self.port)
        app = create_api(query, _settings(ElasticsearchSettings))
        uvicorn.run(
            app,
            host=query.host,
            port=query.port,
            log_level="warning",
            log_config=None,  # uvicorn's loggers propagate to the JSON handler
            workers=1,
        )


class IndexerCommand(_Command):
    """Consume the five entity topics with consumer group KAFKA_GROUP_ID and keep the
    Elasticsearch documents current; poison records go to the dead-letter topic. Serves
    /metrics, /livez and /readyz on INDEXER_METRICS_HOST:INDEXER_METRICS_PORT (port 0
    disables it). Stops gracefully on SIGTERM (the batch in flight is not committed and is
    re-applied by the next owner)."""

    def cli_cmd(self) -> None:
        from indexer import metrics
        from indexer.app import Indexer
        from indexer.runtime import GC_THRESHOLDS
        from services.health import HealthServer

        settings = _settings(IndexerSettings)
        indexer = Indexer(_settings(KafkaSettings), _settings(ElasticsearchSettings), settings)
        # A step allocates tens of thousands of short-lived objects: with the default
        # thresholds the cyclic GC runs hundreds of times a second and rescans everything
        # alive (about 20 % of a step's CPU, measured). Objects alive after start-up are
        # frozen out of its scans.
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


class AlertsCommand(_Command):
    """Consume the indexer's change feed (KAFKA_TOPIC_CHANGES; run the indexer with
    INDEXER_PUBLISH_CHANGES=true) with consumer group ALERTS_GROUP_ID, evaluate every saved
    search on each batch of changed artifacts, publish each new match once to
    KAFKA_TOPIC_ALERTS and POST it to the saved search's webhook (retries, then
    KAFKA_TOPIC_ALERTS_DLQ). Serves /metrics, /livez and /readyz on
    ALERTS_METRICS_HOST:ALERTS_METRICS_PORT (port 0 disables it)."""

    def cli_cmd(self) -> None:
        from alerts.app import AlertsService
        from services.health import HealthServer

        settings = _settings(AlertsSettings)
        service = AlertsService(
            _settings(KafkaSettings), _settings(ElasticsearchSettings), settings
        )

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


class BootstrapCommand(_Command):
    """Create the five entity topics and the dead-letter topic (KAFKA_PARTITIONS,
    KAFKA_REPLICATION_FACTOR) and the three Elasticsearch aliases with their concrete indices
    (ELASTICSEARCH_NUMBER_OF_SHARDS/_REPLICAS). Whatever exists is left alone, so a second
    run changes nothing."""

    def cli_cmd(self) -> None:
        asyncio.run(_bootstrap())


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
            es,
            names,
            es_settings.number_of_shards,
            es_settings.number_of_replicas,
            es_settings.refresh_interval,
        )
        total = len(names.all_aliases()) + len(names.alerting_indices())
        print(f"indices: {len(created)} created, {total - len(created)} already present")
    finally:
        await es.close()


class ProduceCommand(_Command):
    """Publish v1 envelopes from a JSON Lines file, each to its entity's topic with entity_id
    as the key."""

    file: CliPositionalArg[str] = Field(
        description="one envelope per line; {'tombstone': true, ...} for a null value"
    )

    def cli_cmd(self) -> None:
        from services.kafka import publish_records

        records = []
        for number, line in enumerate(Path(self.file).read_text().splitlines(), start=1):
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


class ReplayCommand(_Command):
    """Rebuild the index from the topics: create <alias>-v<N+1> for the three aliases, consume
    every partition of the entity topics from the beginning up to the end offsets captured at
    start (group-less consumer: nothing is committed), apply the events with the indexer's
    engine (poison records are skipped and counted), then move the three aliases to the new
    indices in one atomic POST _aliases and delete the old indices. Readers are never without
    an index. On failure before the swap the new indices are deleted and nothing changes.

    Procedure: stop the indexer, run replay, start the indexer again: each replica resumes
    from its state store and, seeing the new control index, rewrites its partitions once
    (README, 'Upgrade, reindex')."""

    batch_size: int | None = _flag(
        IndexerSettings, "max_batch", "records per engine batch (default INDEXER_MAX_BATCH, 5000)"
    )
    keep_old: bool = Field(
        default=False,
        description="keep the previous indices after the swap (rollback: move the aliases back)",
    )
    shards: int | None = _flag(
        ElasticsearchSettings,
        "number_of_shards",
        "primary shards of the new indices (default ELASTICSEARCH_NUMBER_OF_SHARDS)",
    )
    replicas: int | None = _flag(
        ElasticsearchSettings,
        "number_of_replicas",
        "replicas of the new indices (default ELASTICSEARCH_NUMBER_OF_REPLICAS)",
    )

    def cli_cmd(self) -> None:
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
                    batch_size=self.batch_size,
                    keep_old=self.keep_old,
                    shards=self.shards,
                    replicas=self.replicas,
                )
            )
        except PermanentError as exc:
            sys.exit(f"replay failed (aliases unchanged): {exc}")
        poison = sum(result.poison.values())
        print(
            f"replayed {result.records} records ({result.events} events, {poison} poison "
            f"skipped{': ' + str(dict(result.poison)) if poison else ''}) into version "
            f"{result.version} in {result.seconds:.1f}s"
        )
        print(f"aliases now on: {', '.join(result.new_indices)}")
        if result.deleted:
            print(f"deleted: {', '.join(result.deleted)}")
        elif result.old_indices:
            print(f"kept: {', '.join(result.old_indices)}")


class BackfillCommand(_Command):
    """Read flows, deployments, flow runs, task runs and artifacts from a Prefect 3.x
    PostgreSQL database (keyset pagination on id, in dependency order) and publish one upsert
    per row (version = microseconds of `updated`). Resumable: the checkpoint file holds the
    last (table, id) acknowledged by Kafka; a rerun continues after it. Only database mode is
    implemented: reading through Prefect's REST API is not supported."""

    postgres_dsn: SecretStr | None = _flag(
        BackfillSettings,
        "postgres_dsn",
        "PostgreSQL DSN of the Prefect database, postgresql:// or postgresql+asyncpg:// "
        "(default BACKFILL_POSTGRES_DSN; prefer the variable: arguments are visible in ps)",
        flag="dsn",
    )
    checkpoint: str | None = _flag(
        BackfillSettings,
        "checkpoint",
        "checkpoint file; empty string disables it (default BACKFILL_CHECKPOINT, "
        "prefect-backfill.checkpoint.json)",
    )
    chunk_size: int | None = _flag(
        BackfillSettings,
        "chunk_size",
        "rows per keyset page and per checkpoint (default BACKFILL_CHUNK_SIZE, 1000)",
    )
    max_events_per_second: float | None = _flag(
        BackfillSettings,
        "max_events_per_second",
        "rate limit, 0 = unlimited (default BACKFILL_MAX_EVENTS_PER_SECOND, 0)",
    )
    entities: str = Field(
        default=",".join(ENTITY_NAMES),
        description=f"comma-separated tables to publish (default {','.join(ENTITY_NAMES)})",
    )
    restart: bool = Field(
        default=False, description="ignore an existing checkpoint and start from the first row"
    )

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: str) -> str:
        unknown = sorted(set(_split(value)) - set(ENTITY_NAMES))
        if unknown:
            raise ValueError(
                f"unknown {', '.join(unknown)} (choose from {', '.join(ENTITY_NAMES)})"
            )
        return value

    def cli_cmd(self) -> None:
        from services.backfill import backfill

        flags = self.model_dump(include={"postgres_dsn", "checkpoint", "chunk_size"})
        settings = _settings(
            BackfillSettings, max_events_per_second=self.max_events_per_second, **flags
        )
        if settings.postgres_dsn is None or not settings.postgres_dsn.get_secret_value():
            sys.exit("backfill-prefect needs --dsn or BACKFILL_POSTGRES_DSN")
        result = asyncio.run(
            backfill(
                _settings(KafkaSettings),
                settings.postgres_dsn.get_secret_value(),
                checkpoint_path=Path(settings.checkpoint) if settings.checkpoint else None,
                chunk_size=settings.chunk_size,
                max_events_per_second=settings.max_events_per_second,
                entities=_split(self.entities),
                restart=self.restart,
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


def _split(names: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in names.split(",") if name.strip())


class SyncCommand(_Command):
    """Change data capture from Prefect 3.x's PostgreSQL database (wal_level=logical; a role
    with REPLICATION and SELECT on the tables): creates the publication and the replication
    slot when missing, publishes a snapshot taken consistently with the slot (progress on
    stderr), then streams every committed change of flow, deployment, flow_run, task_run and
    artifact as upsert/delete events (version = 2^62 + the commit LSN). The slot's position
    advances only after Kafka acknowledged (acks=all, idempotent): a restart resumes with no
    loss. Runs until SIGTERM. Metrics (lag, events/s) on
    SYNC_METRICS_HOST:SYNC_METRICS_PORT/metrics. API mode, for a Prefect without database
    access (Prefect Cloud): --api-url instead of --dsn; subscribes to Prefect's event stream,
    reads the changed entities from the REST API, and reconciles with a paged listing every
    --reconcile-interval seconds (catching missed events and deleted artifacts); its
    checkpoint is a SQLite file (--state-file, default SYNC_API_STATE_FILE,
    prefect-sync-api.sqlite).

    Every flag but --recreate-slot and --drop-slot overrides its SYNC_* variable for this
    run, under the same rules."""

    api_url: str | None = _flag(
        SyncSettings,
        "api_url",
        "Prefect's API URL, e.g. https://api.prefect.cloud/api/accounts/<a>/workspaces/<w> "
        "or http://host:4200/api (default SYNC_API_URL): selects the API mode",
    )
    api_key: SecretStr | None = _flag(
        SyncSettings,
        "api_key",
        "Prefect Cloud API key (default SYNC_API_KEY; prefer the variable: arguments are "
        "visible in ps)",
    )
    api_auth_string: SecretStr | None = _flag(
        SyncSettings,
        "api_auth_string",
        "user:password of a self-hosted server's PREFECT_SERVER_API_AUTH_STRING "
        "(default SYNC_API_AUTH_STRING; prefer the variable)",
        flag="auth_string",
    )
    api_requests_per_second: float | None = _flag(
        SyncSettings,
        "api_requests_per_second",
        "API mode: most requests per second to Prefect's API (default 20)",
        flag="requests_per_second",
    )
    reconcile_interval_s: float | None = _flag(
        SyncSettings,
        "reconcile_interval_s",
        "API mode: seconds between reconcile passes (default 300)",
        flag="reconcile_interval",
    )
    postgres_dsn: SecretStr | None = _flag(
        SyncSettings,
        "postgres_dsn",
        "PostgreSQL DSN of the Prefect database (default SYNC_POSTGRES_DSN; prefer the "
        "variable: arguments are visible in ps)",
        flag="dsn",
    )
    slot: str | None = _flag(SyncSettings, "slot", "replication slot (default artifact_search)")
    publication: str | None = _flag(
        SyncSettings, "publication", "publication (default artifact_search)"
    )
    state_file: str | None = _flag(
        SyncSettings,
        "state_file",
        "where the bridge records that its snapshot is out (default SYNC_STATE_FILE, "
        "prefect-sync.state.json; keep it on a volume)",
    )
    recreate_slot: bool = Field(
        default=False,
        description="drop and create the slot again and publish a new snapshot: the way back "
        "after the slot was dropped or invalidated",
    )
    drop_slot: bool = Field(
        default=False,
        description="drop the slot and the state file, then exit (retiring the bridge: an "
        "unused slot makes PostgreSQL keep WAL)",
    )
    max_in_flight: int | None = _flag(
        SyncSettings,
        "max_in_flight",
        "events sent and not yet acknowledged before reading pauses (default 10000)",
    )
    snapshot_chunk: int | None = _flag(
        SyncSettings, "snapshot_chunk", "rows per snapshot read (default 1000)"
    )
    metrics_port: int | None = _flag(
        SyncSettings,
        "metrics_port",
        "port of /metrics, /livez, /readyz; 0 disables (default SYNC_METRICS_PORT, 9465)",
    )

    def settings(self) -> SyncSettings:
        """SYNC_* from the environment, the flags given on top (--state-file is the state
        file of either mode)."""
        flags = self.model_dump(exclude={"recreate_slot", "drop_slot"})
        return _settings(SyncSettings, api_state_file=self.state_file, **flags)

    def cli_cmd(self) -> None:
        from artifact_search.sync import run_sync

        run_sync(
            _settings(KafkaSettings),
            self.settings(),
            recreate_slot=self.recreate_slot,
            drop_slot=self.drop_slot,
        )


class ArtifactSearch(BaseSettings):
    """One entry point for both services and their operations."""

    model_config = SettingsConfigDict(
        cli_prog_name=PROG,
        cli_kebab_case=True,
        cli_implicit_flags="toggle",  # a bool flag is `--keep-old`, with no `--no-keep-old`
        cli_hide_none_type=True,
    )

    api: CliSubCommand[ApiCommand] = Field(
        description="serve the Prefect-compatible query API under /api"
    )
    indexer: CliSubCommand[IndexerCommand] = Field(
        description="consume lifecycle events into Elasticsearch"
    )
    alerts: CliSubCommand[AlertsCommand] = Field(
        description="evaluate saved searches on the indexer's change feed and publish alerts"
    )
    bootstrap: CliSubCommand[BootstrapCommand] = Field(
        description="create topics, indices and aliases (idempotent)"
    )
    produce: CliSubCommand[ProduceCommand] = Field(
        description="publish events from a JSON Lines file of envelopes"
    )
    replay: CliSubCommand[ReplayCommand] = Field(
        description="rebuild the index from the topics into a new index version and swap the "
        "aliases"
    )
    backfill_prefect: CliSubCommand[BackfillCommand] = Field(
        description="publish an existing Prefect server's PostgreSQL database as events"
    )
    sync_prefect: CliSubCommand[SyncCommand] = Field(
        description="keep the topics in step with a live Prefect (its database, or its API)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The command line only (CliApp adds it): the environment is each setting class's."""
        return (init_settings,)


_LIBRARY_DEFAULT = re.compile(r" ?\(default: [^()]*\)$")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each flag's help as written, without the `(default: null)`
    pydantic-settings appends (a flag's default is its variable's, which its help names)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return _LIBRARY_DEFAULT.sub("", action.help or "")


def _add_parser(subparsers: Any, *args: Any, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(*args, epilog=ENV_HELP, **kwargs)
    return parser


def cli_source() -> CliSettingsSource[argparse.ArgumentParser]:
    """The command line's parser, built from the models (also used by tests)."""
    root = argparse.ArgumentParser(
        prog=PROG,
        description=(__doc__ or "").split("\n")[0],
        epilog=ENV_HELP,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    return CliSettingsSource(
        ArtifactSearch,
        root_parser=root,
        add_parser_method=_add_parser,
        formatter_class=_HelpFormatter,
    )


def subcommand_flags() -> dict[str, set[str]]:
    """Each subcommand's name and its option strings (`--help` included): what a README
    command may name."""
    source = cli_source()
    (action,) = [
        a for a in source.root_parser._actions if isinstance(a, argparse._SubParsersAction)
    ]
    return {
        name: {s for a in parser._actions for s in a.option_strings}
        for name, parser in action.choices.items()
    }


def parse(argv: Sequence[str] | None = None) -> ArtifactSearch:
    """The command line as models, or exit 2: argparse's usage errors, a missing subcommand,
    and a value that breaks a constraint, named by its flag (the value is never echoed: it
    could be a secret)."""
    args = list(sys.argv[1:] if argv is None else argv)
    source = cli_source()
    try:
        root = CliApp.run(ArtifactSearch, cli_args=args, cli_settings_source=source)
    except ValidationError as exc:
        lines = [f"{PROG} {_flag_error(err['loc'])}: {err['msg']}" for err in exc.errors()]
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)
    if get_subcommand(root, is_required=False) is None:
        source.root_parser.error("a subcommand is required")
    return root


def _flag_error(loc: tuple[int | str, ...]) -> str:
    """`sync-prefect: --max-in-flight` from a validation error's location."""
    command, *field = (str(part) for part in loc)
    flag = field[0] if field else ""
    for model in get_args(ArtifactSearch.model_fields[command].annotation):
        if isinstance(model, type) and issubclass(model, BaseModel) and flag in model.model_fields:
            flag = str(model.model_fields[flag].validation_alias or flag)
    return f"{command.replace('_', '-')}: --{flag.replace('_', '-')}"


def command_name(root: ArtifactSearch) -> str:
    """The subcommand given, as typed (`sync-prefect`)."""
    command = get_subcommand(root, is_required=False)
    (name,) = [name for name, value in root if value is command]
    return name.replace("_", "-")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `artifact-search` command."""
    root = parse(argv)
    logs = _settings(LoggingSettings)
    if logs.format == "json":
        configure_logging(logs.level)
    else:
        logging.basicConfig(level=logs.level, format="%(levelname)s %(name)s: %(message)s")
        quiet_clients()
    command = command_name(root)
    # the deployables are traced when an OTLP endpoint is configured (services/telemetry.py)
    otel = _settings(TelemetrySettings) if command in SERVICE_NAMES else None
    with correlation(), tracing(command, otel):
        CliApp.run_subcommand(root)


if __name__ == "__main__":
    main()
