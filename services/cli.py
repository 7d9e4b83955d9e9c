"""`artifact-search`: one entry point for both services and their operations.

Subcommands: `api` (query service), `indexer` (Kafka consumer), `bootstrap`
(topics, indices, aliases; idempotent), `demo` (publish a generated dataset),
`produce` (publish events from a JSON Lines file). Settings come from the
environment (see README); invalid settings stop the command with a message
naming the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings, QuerySettings

log = logging.getLogger("artifact-search")


def _settings(cls: type[Any]) -> Any:
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [
            f"  {prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        sys.exit("invalid configuration:\n" + "\n".join(lines))


def _cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from query.app import create_app

    query = _settings(QuerySettings)
    app = create_app(query, _settings(ElasticsearchSettings))
    uvicorn.run(
        app,
        host=args.host or query.host,
        port=args.port or query.port,
        log_level="warning",
        workers=1,
    )


def _cmd_indexer(_: argparse.Namespace) -> None:
    from indexer.app import Indexer

    indexer = Indexer(
        _settings(KafkaSettings), _settings(ElasticsearchSettings), _settings(IndexerSettings)
    )
    asyncio.run(indexer.app().run())


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
        created = await ensure_indices(
            es,
            IndexNames(es_settings.index_prefix),
            es_settings.number_of_shards,
            es_settings.number_of_replicas,
        )
        print(f"indices: {len(created)} created, {3 - len(created)} already present")
    finally:
        await es.close()


async def _publish(records: Sequence[tuple[str, bytes, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    from services.kafka import producer_kwargs

    kafka = _settings(KafkaSettings)
    producer = AIOKafkaProducer(**producer_kwargs(kafka), acks="all", linger_ms=20)
    await producer.start()
    try:
        batch = []
        for entity, key, value in records:
            batch.append(await producer.send(kafka.topic_for(entity), value=value, key=key))
            if len(batch) >= 5000:
                await asyncio.gather(*batch)
                batch.clear()
        await asyncio.gather(*batch)
    finally:
        await producer.stop()


def _cmd_demo(args: argparse.Namespace) -> None:
    from services.events import dataset_events

    records = dataset_events(seed=args.seed, artifacts=args.artifacts)
    asyncio.run(_publish(records))
    print(f"published {len(records)} events")


def _cmd_produce(args: argparse.Namespace) -> None:
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
    asyncio.run(_publish(records))
    print(f"published {len(records)} events")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by tests to check `--help`)."""
    parser = argparse.ArgumentParser(prog="artifact-search", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the Prefect-compatible query API under /api")
    api.add_argument("--host", help="bind address (default QUERY_HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default QUERY_PORT, 4200)")
    api.set_defaults(func=_cmd_api)
    sub.add_parser("indexer", help="consume lifecycle events into Elasticsearch").set_defaults(
        func=_cmd_indexer
    )
    sub.add_parser(
        "bootstrap", help="create topics, indices and aliases (idempotent)"
    ).set_defaults(func=lambda _: asyncio.run(_bootstrap()))
    demo = sub.add_parser("demo", help="publish a generated, seeded dataset as events")
    demo.add_argument("--seed", type=int, default=7, help="dataset seed (default 7)")
    demo.add_argument(
        "--artifacts", type=int, default=500, help="number of artifacts (default 500)"
    )
    demo.set_defaults(func=_cmd_demo)
    produce = sub.add_parser("produce", help="publish events from a JSON Lines file of envelopes")
    produce.add_argument(
        "file", help="one envelope per line; {'tombstone': true, ...} for a null value"
    )
    produce.set_defaults(func=_cmd_produce)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `artifact-search` command."""
    logging.basicConfig(
        level=logging.INFO,
        format='{"level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
