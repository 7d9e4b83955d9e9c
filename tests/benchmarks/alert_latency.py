"""Alert latency: an artifact event produced -> its alert on the alert topic, at a steady rate.

``python -m tests.benchmarks.alert_latency [--rate 1000] [--seconds 60] [--searches 20]``
runs this part alone; ``tests/benchmarks/run.py`` runs it once per benchmark (after the
scales) and RESULTS.md reports it.

Its own stack, on unique topics and indices (removed at the end): the indexer as a child
process with ``INDEXER_PUBLISH_CHANGES=true``, the alerts worker (``artifact-search
alerts``, webhooks off) as another, and ``--searches`` saved searches stored through the
saved-search store — one that every probe artifact matches (the measured one), the others
matching nothing (each still costs a search per batch). Probe artifacts (new keys,
markdown text) are produced at ``--rate`` events/s for ``--seconds`` after a short warm-up;
a consumer of the alert topic records when each probe's alert arrives. Latency = arrival
minus the moment just before the produce call, as in the freshness measurement. The index
holds only the probes: evaluation searches are restricted to the changed ids, so its size
should matter little, but that is not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from elasticsearch import AsyncElasticsearch

from alerts.model import SavedSearchIn
from alerts.searches import SavedSearchStore
from services.contract import encode_event
from services.es.admin import ensure_indices
from services.es.indices import IndexNames
from tests.benchmarks.kafka_io import (
    KAFKA,
    create_topics,
    kafka_settings,
    make_producer,
    partitions,
)
from tests.benchmarks.procs import Child, free_port, wait_http_ok
from tests.benchmarks.run import pct
from tests.benchmarks.side import ES_URL, indexer_child, stack_env, tear_down

WARMUP = 20
DRAIN_S = 30.0
TS = "2026-01-01T00:00:00Z"


def _event(entity: str, entity_id: str, body: dict[str, Any]) -> bytes:
    return encode_event(entity, entity_id, "upsert", 1, {"id": entity_id, **body})


async def alert_latency(
    rate: int, seconds: float, searches: int = 20, log_dir: Path | None = None
) -> dict[str, Any]:
    """One measurement at `rate` events/s for `seconds` (see the module docstring)."""
    prefix = f"bench-alerts-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:10]
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="alert-latency-"))
    kafka = kafka_settings(prefix + ".")
    names = IndexNames(prefix + "-")
    env = {
        **stack_env(kafka, names),
        "INDEXER_PUBLISH_CHANGES": "true",
        "ALERTS_GROUP_ID": prefix + "-alerts",
        "ALERTS_WEBHOOKS": "false",
    }
    es = AsyncElasticsearch(ES_URL)
    children: list[Child] = []
    topics: list[str] = []
    try:
        topics = await create_topics(kafka)
        await ensure_indices(es, names)
        store = SavedSearchStore(es, names.saved_searches)
        measured = await store.create(
            SavedSearchIn.model_validate({"name": "probe", "search": {"q": f"probe{tag}"}})
        )
        for i in range(searches - 1):
            await store.create(
                SavedSearchIn.model_validate(
                    {"name": f"other-{i}", "search": {"q": f"nothing{tag}x{i}"}}
                )
            )
        indexer = indexer_child(env, log_dir, 0)
        alerts_port = free_port()
        alerts = Child(
            "alerts",
            ["-m", "artifact_search.cli", "alerts"],
            {**env, "ALERTS_METRICS_HOST": "127.0.0.1", "ALERTS_METRICS_PORT": str(alerts_port)},
            log_dir,
        )
        children += [indexer, alerts]
        await wait_http_ok(alerts, f"http://127.0.0.1:{alerts_port}/readyz", 120)
        topics += [kafka.changes_topic, kafka.alerts_topic, kafka.alerts_dlq_topic]
        return await _measure(kafka, measured.id, tag, rate, seconds, searches, children)
    finally:
        await tear_down(children, topics, names.prefix)
        await es.close()


async def _measure(
    kafka: Any,
    search_id: str,
    tag: str,
    rate: int,
    seconds: float,
    searches: int,
    children: list[Child],
) -> dict[str, Any]:
    producer = await make_producer()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    flow, run = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        tps = [
            TopicPartition(kafka.alerts_topic, p)
            for p in await partitions(consumer, kafka.alerts_topic)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await producer.send_and_wait(
            kafka.topic_for("flow"),
            _event("flow", flow, {"name": "bench", "created": TS, "updated": TS}),
            key=flow.encode(),
        )
        await producer.send_and_wait(
            kafka.topic_for("flow_run"),
            _event(
                "flow_run",
                run,
                {"name": "r", "flow_id": flow, "state_type": "COMPLETED", "created": TS},
            ),
            key=run.encode(),
        )

        async def send(n: int) -> None:
            artifact = str(uuid.uuid4())
            body = {
                "key": f"probe-{tag}-{n}",
                "type": "markdown",
                "data": f"# Report {n}\n\nprobe{tag} revenue grew {n % 97} percent",
                "flow_run_id": run,
                "created": TS,
                "updated": TS,
            }
            t = time.perf_counter()
            await producer.send(
                kafka.topic_for("artifact"),
                _event("artifact", artifact, body),
                key=artifact.encode(),
            )
            sent[artifact] = t

        async def receive(until: float, want: set[str]) -> None:
            while time.perf_counter() < until and not (want and want <= arrived.keys()):
                for child in children:
                    child.check()
                batches = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for records in batches.values():
                    for record in records:
                        alert = orjson.loads(record.value)
                        if alert["saved_search"]["id"] == search_id:
                            arrived.setdefault(alert["artifact_id"], now)

        for n in range(WARMUP):  # first batches pay for connections and caches
            await send(n)
        await producer.flush()
        await receive(time.perf_counter() + 120, set(sent))
        warm = set(sent)
        if not warm <= arrived.keys():
            raise TimeoutError(f"only {len(arrived)}/{WARMUP} warm-up alerts arrived in 120 s")

        start = time.perf_counter()
        receiving = asyncio.create_task(receive(start + seconds + DRAIN_S, set()))
        for i in range(int(rate * seconds)):  # event i is due at start + i / rate
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(WARMUP + i)
        await producer.flush()
        send_s = time.perf_counter() - start
        measured = set(sent) - warm
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        await receive(time.perf_counter() + DRAIN_S, measured)
    finally:
        await consumer.stop()
        await producer.stop()
    lat = [arrived[a] - sent[a] for a in measured if a in arrived]
    out = {
        "rate_target": rate,
        "seconds": seconds,
        "saved_searches": searches,
        "sent": len(measured),
        "rate_achieved": round(len(measured) / send_s, 1) if send_s else None,
        "alerted": len(lat),
        "missing_after_drain": len(measured) - len(lat),
        "p50_s": round(pct(lat, 0.5), 3) if lat else None,
        "p95_s": round(pct(lat, 0.95), 3) if lat else None,
        "p99_s": round(pct(lat, 0.99), 3) if lat else None,
        "max_s": round(max(lat), 3) if lat else None,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="probe artifacts per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--searches", type=int, default=20, help="saved searches (>= 1)")
    args = parser.parse_args()
    result = asyncio.run(alert_latency(args.rate, args.seconds, max(1, args.searches)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
