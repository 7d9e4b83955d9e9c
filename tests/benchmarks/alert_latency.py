"""Alert latency: an artifact event produced -> its alert on the alert topic, at a steady rate.

``python -m tests.benchmarks.alert_latency [--rate 1000] [--seconds 60] [--searches 20]``
runs this part alone; ``tests/benchmarks/run.py`` runs it once per benchmark (after the
scales) and RESULTS.md reports it.

Its own stack, on unique topics and indices (removed at the end): the indexer as a child
process with ``INDEXER_PUBLISH_CHANGES=true``, the alerts worker (``artifact-search
alerts``, webhooks off) as another, and ``--searches`` saved searches stored through the
saved-search store (`_saved_searches`): ``probe``, which every probe artifact matches (the
measured one: every event alerts, the worst case for the worker), ``latest`` in
latest_per_key mode (one probe in ten), ``failed`` on the flow run's state (the probes of a
run that turns FAILED), the others matching nothing (each still evaluated on every batch).
Probe artifacts (a new key each, markdown text, in flow runs of 100; one run in ten turns
FAILED a second after its last probe, so its 100 artifacts are rewritten and alert
``failed``) are produced at ``--rate`` events/s for ``--seconds`` after a short warm-up;
a consumer of the alert topic records when each alert arrives. Latency = arrival minus the
moment just before the produce call (for ``failed``: the run's FAILED event), as in the
freshness measurement. Where the time goes, from Kafka's record timestamps (one clock):
``indexer_share`` = event produced -> the first change record naming the artifact (the
indexer consumed it, wrote it, Elasticsearch acknowledged, the feed record was produced);
``worker_share`` = that change record -> the probe's alert record (the worker consumed,
made it searchable, evaluated, claimed, produced). The index holds only the probes:
evaluation searches are restricted to the changed ids, so its size should matter little,
but that is not measured here.

``--refresh-cost EVERY_S`` measures instead what forced refreshes cost the indexer: its
throughput on a backlog of ``--rate`` x ``--seconds`` such events, with a refresh of the
artifact and collection indices every EVERY_S seconds meanwhile (0: none).
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
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from alerts.model import SavedSearchIn
from alerts.searches import SavedSearchStore
from services.contract import encode_event
from services.es.admin import ensure_indices
from services.es.indices import IndexNames
from tests.benchmarks.kafka_io import (
    KAFKA,
    create_topics,
    end_offsets,
    kafka_settings,
    lag,
    make_producer,
    publish,
)
from tests.benchmarks.procs import Child, free_port, wait_http_ok
from tests.benchmarks.run import pct
from tests.benchmarks.side import (
    ES_URL,
    entity_and_member_topics,
    indexer_child,
    stack_env,
    tear_down,
)
from tests.kafka_helpers import partitions

WARMUP = 20
DRAIN_S = 30.0
TS = "2026-01-01T00:00:00Z"


def _event(entity: str, entity_id: str, body: dict[str, Any], version: int = 1) -> bytes:
    return encode_event(entity, entity_id, "upsert", version, {"id": entity_id, **body})


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
        ids = {}
        for name, body in _saved_searches(tag, searches):
            saved = await store.create(SavedSearchIn.model_validate({"name": name, **body}))
            ids[name] = saved.id
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
        return await _measure(kafka, ids, tag, rate, seconds, searches, children)
    finally:
        await tear_down(children, topics, names.prefix)
        await es.close()


def _saved_searches(tag: str, searches: int) -> list[tuple[str, dict[str, Any]]]:
    """`searches` saved searches: the measured one (every probe matches), one in
    latest_per_key mode (one probe in `WEEKLY_EVERY`, each the latest of its key), one on a
    run state (the probes of a flow run that turns FAILED), and others that match nothing."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("probe", {"search": {"q": f"probe{tag}"}}),
        ("latest", {"search": {"q": f"weekly{tag}", "latest_per_key": True}}),
        (
            "failed",
            {
                "search": {
                    "q": f"probe{tag}",
                    "prefect_filter": {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}},
                }
            },
        ),
    ]
    out += [
        (f"other-{i}", {"search": {"q": f"nothing{tag}x{i} OR report{tag}x{i}"}})
        for i in range(max(0, searches - len(out)))
    ]
    return out[: max(1, searches)]


RUN_SIZE = 100
"""Probe artifacts per flow run; every `FAIL_EVERY`-th run turns FAILED `FAIL_AFTER_S`
after its last probe (the `failed` saved search then alerts its probes)."""
FAIL_EVERY = 10
FAIL_AFTER_S = 1.0
WEEKLY_EVERY = 10
"""One probe in this many also matches the latest_per_key saved search."""


def _stats(values: list[float]) -> dict[str, float | None]:
    return {
        f"p{int(q * 100)}_s": round(pct(values, q), 3) if values else None
        for q in (0.5, 0.95, 0.99)
    } | {"max_s": round(max(values), 3) if values else None}


async def _measure(
    kafka: Any,
    ids: dict[str, str],
    tag: str,
    rate: int,
    seconds: float,
    searches: int,
    children: list[Child],
) -> dict[str, Any]:
    producer = await make_producer()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    sent: dict[str, float] = {}  # artifact id -> perf_counter just before its produce
    sent_wall: dict[str, float] = {}  # the same moment, wall clock (Kafka timestamps)
    run_of: dict[str, str] = {}
    weekly_of: set[str] = set()  # probes the latest_per_key search matches
    failed_at: dict[str, float] = {}  # flow run id -> perf_counter before its FAILED event
    changed_ms: dict[str, int] = {}  # artifact id -> first change record's timestamp
    alerted_ms: dict[tuple[str, str], int] = {}  # (search, artifact) -> alert's timestamp
    arrived: dict[tuple[str, str], float] = {}  # (search, artifact) -> perf_counter
    by_id = {v: k for k, v in ids.items()}
    flow = str(uuid.uuid4())
    runs: list[str] = []
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (kafka.alerts_topic, kafka.changes_topic)
            for p in await partitions(consumer, topic)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await producer.send_and_wait(
            kafka.topic_for("flow"),
            _event("flow", flow, {"name": "bench", "created": TS, "updated": TS}),
            key=flow.encode(),
        )

        async def run_event(run: str, version: int, state: str) -> None:
            body = {"name": "r", "flow_id": flow, "state_type": state, "created": TS}
            await producer.send(
                kafka.topic_for("flow_run"),
                _event("flow_run", run, {**body, "updated": TS}, version),
                key=run.encode(),
            )

        async def send(n: int) -> None:
            if n % RUN_SIZE == 0:
                runs.append(str(uuid.uuid4()))
                await run_event(runs[-1], 1, "RUNNING")
            artifact = str(uuid.uuid4())
            body = {
                "key": f"probe-{tag}-{n}",
                "type": "markdown",
                "data": f"# Report {n}\n\nprobe{tag} revenue grew {n % 97} percent"
                + (f" weekly{tag}" if n % WEEKLY_EVERY == 0 else ""),
                "flow_run_id": runs[-1],
                "created": TS,
                "updated": TS,
            }
            t, w = time.perf_counter(), time.time()
            await producer.send(
                kafka.topic_for("artifact"),
                _event("artifact", artifact, body),
                key=artifact.encode(),
            )
            sent[artifact], sent_wall[artifact] = t, w
            if n % WEEKLY_EVERY == 0:
                weekly_of.add(artifact)
            run_of[artifact] = runs[-1]

        async def fail(run: str) -> None:
            t = time.perf_counter()
            await run_event(run, 2, "FAILED")
            failed_at[run] = t

        async def receive(until: float, want: set[tuple[str, str]]) -> None:
            """Record arrivals until `until` or, if `want` is not empty, until every
            (saved search, artifact) alert of `want` has arrived."""
            while time.perf_counter() < until and not (want and want <= arrived.keys()):
                for child in children:
                    child.check()
                batches = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for tp, records in batches.items():
                    for record in records:
                        value = orjson.loads(record.value)
                        if tp.topic == kafka.changes_topic:
                            for artifact, _version in value["a"]:
                                changed_ms.setdefault(artifact, record.timestamp)
                            continue
                        name = by_id.get(value["saved_search"]["id"], "")
                        arrived.setdefault((name, value["artifact_id"]), now)
                        alerted_ms.setdefault((name, value["artifact_id"]), record.timestamp)

        for n in range(WARMUP):  # first batches pay for connections and caches
            await send(n)
        await producer.flush()
        await receive(time.perf_counter() + 120, {("probe", a) for a in sent})
        warm = set(sent)
        if not {("probe", a) for a in warm} <= arrived.keys():
            raise TimeoutError(f"not all {WARMUP} warm-up alerts arrived in 120 s")

        start = time.perf_counter()
        receiving = asyncio.create_task(receive(start + seconds + DRAIN_S, set()))
        owed: list[tuple[float, str]] = []  # (due, run) of FAILED events
        for i in range(int(rate * seconds)):  # event i is due at start + i / rate
            due = start + i / rate
            while owed and owed[0][0] <= due:
                await fail(owed.pop(0)[1])
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            n = WARMUP + i
            await send(n)
            if n % RUN_SIZE == RUN_SIZE - 1 and (n // RUN_SIZE) % FAIL_EVERY == FAIL_EVERY - 1:
                owed.append((due + FAIL_AFTER_S, runs[-1]))
        for _, run in owed:
            await fail(run)
        await producer.flush()
        send_s = time.perf_counter() - start
        measured = set(sent) - warm
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        expected = {("probe", a) for a in measured}  # every alert the run owes, not only probe's
        expected |= {("latest", a) for a in measured & weekly_of if "latest" in ids}
        expected |= {("failed", a) for a in measured if run_of[a] in failed_at and "failed" in ids}
        await receive(time.perf_counter() + DRAIN_S, expected)
    finally:
        await consumer.stop()
        await producer.stop()
    lat = [arrived["probe", a] - sent[a] for a in measured if ("probe", a) in arrived]
    latest = [arrived["latest", a] - sent[a] for a in measured if ("latest", a) in arrived]
    weekly = [a for a in measured if a in weekly_of]
    in_failed = [a for a in measured if run_of[a] in failed_at]
    flips = [
        arrived["failed", a] - failed_at[run_of[a]] for a in in_failed if ("failed", a) in arrived
    ]
    # where the time goes (Kafka timestamps, wall clock, ms): event produced -> its first
    # change record (the indexer: consume, step, _bulk acknowledged, feed produced) -> its
    # alert record (the worker: consume, visibility, evaluation, ledger, produce)
    indexer = [
        changed_ms[a] / 1000 - sent_wall[a]
        for a in measured
        if a in changed_ms and ("probe", a) in alerted_ms
    ]
    worker = [
        (alerted_ms["probe", a] - changed_ms[a]) / 1000
        for a in measured
        if a in changed_ms and ("probe", a) in alerted_ms
    ]
    return {
        "rate_target": rate,
        "seconds": seconds,
        "saved_searches": searches,
        "sent": len(measured),
        "rate_achieved": round(len(measured) / send_s, 1) if send_s else None,
        "alerted": len(lat),
        "missing_after_drain": len(measured) - len(lat),
        **_stats(lat),
        "latest_per_key": {"owed": len(weekly), "alerted": len(latest), **_stats(latest)},
        "run_state": {
            "flipped_runs": len(failed_at),
            "owed": len(in_failed),
            "alerted": len(flips),
            **_stats(flips),
        },
        "indexer_share": _stats(indexer),
        "worker_share": _stats(worker),
    }


async def refresh_cost(events: int, refresh_every_s: float | None) -> dict[str, Any]:
    """The indexer's throughput on a backlog of `events` probe-like artifacts (runs of
    `RUN_SIZE`, a new key each, the change feed on), with a `_refresh` of the artifact and
    collection indices every `refresh_every_s` meanwhile (the alerts worker forces at most
    one per batch of changes) or none: what forced refreshes cost the indexer."""
    prefix = f"bench-refresh-{uuid.uuid4().hex[:8]}"
    log_dir = Path(tempfile.mkdtemp(prefix="refresh-cost-"))
    kafka = kafka_settings(prefix + ".")
    names = IndexNames(prefix + "-")
    env = {**stack_env(kafka, names), "INDEXER_PUBLISH_CHANGES": "true"}
    es = AsyncElasticsearch(ES_URL)
    children: list[Child] = []
    topics: list[str] = []
    refreshes = 0
    try:
        topics = await create_topics(kafka)
        await ensure_indices(es, names)
        records: list[tuple[str, bytes, Any]] = []
        flow = str(uuid.uuid4())
        records.append(
            (
                "flow",
                flow.encode(),
                _event("flow", flow, {"name": "b", "created": TS, "updated": TS}),
            )
        )
        run = ""
        for n in range(events):
            if n % RUN_SIZE == 0:
                run = str(uuid.uuid4())
                body = {"name": "r", "flow_id": flow, "state_type": "RUNNING"}
                body |= {"created": TS, "updated": TS}
                records.append(("flow_run", run.encode(), _event("flow_run", run, body)))
            artifact = str(uuid.uuid4())
            body = {
                "key": f"probe-{n}",
                "type": "markdown",
                "data": f"# Report {n}\n\nprobe revenue grew {n % 97} percent",
                "flow_run_id": run,
                "created": TS,
                "updated": TS,
            }
            records.append(("artifact", artifact.encode(), _event("artifact", artifact, body)))
        producer = await make_producer()
        try:
            await publish(producer, kafka, records)
        finally:
            await producer.stop()
        ends = await end_offsets(entity_and_member_topics(topics))
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            start = time.perf_counter()
            children.append(indexer_child(env, log_dir, 0))
            next_refresh = start
            while True:
                children[0].check()
                if refresh_every_s is not None and time.perf_counter() >= next_refresh:
                    await es.indices.refresh(index=f"{names.artifacts},{names.collections}")
                    refreshes += 1
                    next_refresh += refresh_every_s
                # the member topic's end grows while indexing: read it again each time
                ends = await end_offsets(entity_and_member_topics(topics))
                if await lag(kafka, admin, ends) == 0:
                    break
                await asyncio.sleep(min(refresh_every_s or 0.5, 0.5))
            seconds = time.perf_counter() - start
        finally:
            await admin.close()
        topics += [kafka.changes_topic]
    finally:
        await tear_down(children, topics, names.prefix)
        await es.close()
    return {
        "events": len(records),
        "refresh_every_s": refresh_every_s,
        "refreshes": refreshes,
        "seconds": round(seconds, 1),
        "events_per_s": round(len(records) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="probe artifacts per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--searches", type=int, default=20, help="saved searches (>= 1)")
    parser.add_argument(
        "--refresh-cost",
        type=float,
        metavar="EVERY_S",
        help="instead: the indexer's throughput on a backlog of --rate x --seconds events "
        "with a forced refresh every EVERY_S seconds (0: none)",
    )
    args = parser.parse_args()
    if args.refresh_cost is not None:
        every = args.refresh_cost if args.refresh_cost > 0 else None
        result = asyncio.run(refresh_cost(int(args.rate * args.seconds), every))
    else:
        result = asyncio.run(alert_latency(args.rate, args.seconds, max(1, args.searches)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
