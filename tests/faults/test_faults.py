"""Fault scenarios: crashes, server outages and rebalances end in the exact expected state.

Each scenario publishes a seeded dataset's noisy event stream (datagen.events.HARD:
earlier versions, duplicates, stale re-sends, deletes and tombstones, random
cross-entity order) to the PRIVATE Kafka, runs the indexer as real processes
(`python -m artifact_search.cli indexer`), injects its fault, waits for convergence (consumer
lag 0 and stable answers) and then checks the FULL state against the dataset: every
live artifact and collection as exact JSON, join-filter counts computed in Python, and
the stored version and liveness of every artifact and entity document. Figures go to
.local/faults/figures.jsonl; docs/reliability/FAULTS.md summarises them.

Scenarios: 1. the indexer SIGKILLed >= 5 times over >= 50,000 events; 2 + 5. Elasticsearch
stopped for 30 s mid-stream, with the query service probed on every endpoint during the
same outage; 3. the Kafka broker restarted mid-stream; 4. two replicas, one SIGKILLed;
6. an indexer started while Elasticsearch is unreachable. (test_es_rejections.py: 429s.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from typing import Any

import httpx
import pytest

from datagen.dataset import Dataset
from tests.faults.harness import (
    CONVERGE_S,
    PrivateServers,
    Scenario,
    assert_exact,
    expected_state,
    figures_of,
    full_check,
    open_scenario,
    record_figures,
    retry_async,
    stream,
    wait_converged,
    wait_progress,
)

pytestmark = pytest.mark.timeout(600)


# --------------------------------------------------------------------------------------------
# 1. the indexer SIGKILLed at random points, at least 5 times, over >= 50,000 events
# --------------------------------------------------------------------------------------------
KILLS = 5
CRASH_ARTIFACTS = 18_500  # the HARD stream of this scale has ~50,300 records
POISON = 25


@pytest.mark.slow
async def test_indexer_sigkilled_repeatedly_loses_and_doubles_nothing(
    private_servers: PrivateServers,
) -> None:
    seed = 101
    dataset, records = stream(seed, CRASH_ARTIFACTS, poison=POISON)
    assert len(records) >= 50_000
    expected = expected_state(dataset, records)
    rng = random.Random(seed)
    started = time.monotonic()
    async with open_scenario(private_servers, "crash") as sc:
        # Driven by progress, never by the clock: the stream is published in slices, and each
        # kill waits for a committed-offset milestone inside the published part. The indexer
        # can never run out of work before a kill (the rest of the stream is not published
        # yet), so every run does exactly KILLS kills however fast or slow the machine is.
        # Milestones are spread over 10 %..70 % of the stream with seeded jitter; each slice
        # reaches a few batches past its milestone, so a kill usually lands mid-batch.
        published = 0
        proc = sc.start_indexer("run0")
        kills: list[dict[str, Any]] = []
        for cycle in range(KILLS):
            fraction = 0.10 + 0.60 * cycle / (KILLS - 1) + rng.uniform(-0.04, 0.04)
            target = int(len(records) * fraction)
            bound = min(len(records), target + rng.randrange(2_000, 6_000))
            await sc.topics.publish(records[published:bound])
            published = bound
            done = await wait_progress(sc, target, 180)
            lag, _, _ = await sc.topics.lag()
            proc.kill9()
            kills.append(
                {
                    "after_s": round(time.monotonic() - proc.started, 1),
                    "committed": done,
                    "lag_at_kill": lag,
                }
            )
            proc = sc.start_indexer(f"run{cycle + 1}")
        await sc.topics.publish(records[published:])
        fault_end = time.monotonic()
        converged = await wait_converged(sc.topics, sc.client, expected, CONVERGE_S)
        report = await full_check(sc, expected)
        _, committed, _ = await sc.topics.lag()
        dead = await sc.topics.dead_letters()
        figures = figures_of(records, expected, committed, report, dead)
        figures.update(
            kills=len(kills),
            kill_points=kills,
            recovery_s=round(max(converged - fault_end, 0.0), 1),
            scenario_s=round(time.monotonic() - started, 1),
        )
        record_figures("indexer-sigkill", figures)
        assert proc.alive(), proc.log_text()[-3000:]
    assert len(kills) == KILLS
    assert_exact(report)
    assert figures["dead_lettered_distinct"] == POISON


# --------------------------------------------------------------------------------------------
# 2 + 5. Elasticsearch stopped for 30 s mid-stream: the indexer waits and loses nothing; the
# query service answers 503 with a JSON body on every endpoint and recovers by itself
# --------------------------------------------------------------------------------------------
OUTAGE_S = 30.0


def probes(dataset: Dataset) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One request per endpoint of the query service (reads by id and key included)."""
    art = dataset.artifacts[0]
    key = next(
        a["key"] for a in dataset.artifacts if a["key"] and re.fullmatch(r"[\w-]+", a["key"])
    )
    return [
        ("POST", "/api/artifacts/filter", {"limit": 5}),
        ("POST", "/api/artifacts/count", {}),
        ("POST", "/api/artifacts/latest/filter", {"limit": 5}),
        ("POST", "/api/artifacts/latest/count", {}),
        ("POST", "/api/artifacts/filter", {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}}),
        ("POST", "/api/artifacts/filter", {"offset": 190, "limit": 20, "sort": "KEY_ASC"}),
        ("GET", f"/api/artifacts/{art['id']}", None),
        ("GET", f"/api/artifacts/{key}/latest", None),
        ("GET", "/api/ready", None),
    ]


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any) -> httpx.Response:
    if method == "GET":
        return await client.get(path)
    return await client.post(path, json=body)


async def probe_all(
    client: httpx.AsyncClient, checks: list[tuple[str, str, dict[str, Any] | None]]
) -> list[dict[str, Any]]:
    out = []
    for method, path, body in checks:
        t0 = time.monotonic()
        resp = await call(client, method, path, body)
        is_json = resp.headers.get("content-type") == "application/json"
        out.append(
            {
                "path": path,
                "status": resp.status_code,
                "json": is_json,
                "body": resp.json() if is_json else resp.text[:200],
                "seconds": round(time.monotonic() - t0, 3),
            }
        )
    return out


async def test_elasticsearch_outage_mid_stream(private_servers: PrivateServers) -> None:
    seed = 202
    dataset, records = stream(seed, 3_500)
    expected = expected_state(dataset, records)
    checks = probes(dataset)
    half = len(records) // 2
    started = time.monotonic()
    async with open_scenario(private_servers, "esdown") as sc:
        await sc.topics.publish(records[:half])
        proc = sc.start_indexer("a")
        await wait_progress(sc, half // 4, 90)
        before = await probe_all(sc.client, checks)
        private_servers.run("stop", "es")
        down_at = time.monotonic()
        down = await probe_all(sc.client, checks)
        health = await sc.client.get("/api/health")
        # events keep arriving while Elasticsearch is down
        await sc.topics.publish(records[half:])
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - down_at)))
        _, frozen, _ = await sc.topics.lag()
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        _, still, _ = await sc.topics.lag()
        outage = time.monotonic() - down_at
        restart_s = private_servers.run("start", "es")
        fault_end = time.monotonic()
        # the same query app (same Elasticsearch client) must recover without a restart
        after: list[dict[str, Any]] = []
        for _ in range(120):
            after = await probe_all(sc.client, checks)
            if all(p["status"] < 500 for p in after):
                break
            await asyncio.sleep(0.5)
        query_recovered = time.monotonic()
        converged = await wait_converged(sc.topics, sc.client, expected, CONVERGE_S)
        report = await full_check(sc, expected)
        final = await probe_all(sc.client, checks)
        _, committed, _ = await sc.topics.lag()
        figures = figures_of(records, expected, committed, report, await sc.topics.dead_letters())
        figures.update(
            outage_s=round(outage, 1),
            es_restart_s=round(restart_s, 1),
            committed_during_outage=still - frozen,
            recovery_s=round(converged - fault_end, 1),
            scenario_s=round(time.monotonic() - started, 1),
        )
        record_figures("elasticsearch-outage", figures)
        record_figures(
            "query-while-es-down",
            {
                "endpoints_probed": len(checks),
                "statuses_before": sorted({p["status"] for p in before}),
                "statuses_while_down": sorted({p["status"] for p in down}),
                "slowest_503_s": max(p["seconds"] for p in down),
                "health_while_down": health.status_code,
                "statuses_after": sorted({p["status"] for p in after}),
                "statuses_final": [p["status"] for p in final],
                "recovery_s": round(query_recovered - fault_end, 1),
                "example_503": down[0]["body"],
            },
        )
        assert proc.alive(), proc.log_text()[-3000:]
    # the indexer: nothing can be applied while Elasticsearch is down, so nothing is committed
    assert figures["committed_during_outage"] == 0
    assert_exact(report)
    # the query service
    assert all(p["status"] < 500 for p in before), before
    for item in down:
        assert item["status"] == 503, item
        assert item["json"] and isinstance(item["body"], dict), item
        assert "elasticsearch" in str(item["body"].get("detail", "")).lower(), item
        assert item["seconds"] < 10, item
    assert health.status_code == 200  # liveness does not depend on Elasticsearch
    assert all(p["status"] < 500 for p in after), after
    assert [p["status"] for p in final] == [200] * len(checks), final


# --------------------------------------------------------------------------------------------
# 3. the Kafka broker restarted in the middle of the stream
# --------------------------------------------------------------------------------------------
async def test_kafka_broker_restart_mid_stream(private_servers: PrivateServers) -> None:
    seed = 303
    dataset, records = stream(seed, 4_000)
    expected = expected_state(dataset, records)
    half = len(records) // 2
    started = time.monotonic()
    async with open_scenario(private_servers, "kafkarestart") as sc:
        await sc.topics.publish(records[:half])
        proc = sc.start_indexer("a")
        await wait_progress(sc, half // 4, 90)
        down_s = private_servers.run("stop", "kafka")
        up_s = private_servers.run("start", "kafka")
        fault_end = time.monotonic()
        # the rest of the stream is produced after the restart
        await retry_async("publishing after the restart", lambda: sc.topics.publish([]), 60)
        await sc.topics.publish(records[half:])
        converged = await wait_converged(sc.topics, sc.client, expected, CONVERGE_S)
        report = await full_check(sc, expected)
        _, committed, _ = await sc.topics.lag()
        figures = figures_of(records, expected, committed, report, await sc.topics.dead_letters())
        figures.update(
            broker_stop_s=round(down_s, 1),
            broker_start_s=round(up_s, 1),
            recovery_s=round(converged - fault_end, 1),
            scenario_s=round(time.monotonic() - started, 1),
        )
        record_figures("kafka-restart", figures)
        assert proc.alive(), proc.log_text()[-3000:]
    assert_exact(report)


# --------------------------------------------------------------------------------------------
# 4. two replicas in one group, one SIGKILLed mid-stream: the survivor finishes everything
# --------------------------------------------------------------------------------------------
async def test_replica_sigkilled_survivor_finishes(private_servers: PrivateServers) -> None:
    seed = 404
    dataset, records = stream(seed, 5_000, poison=5)
    expected = expected_state(dataset, records)
    rng = random.Random(seed)
    started = time.monotonic()
    # progress, not time: a fifth of the stream before the replicas start, half once both
    # are members, the kill when a quarter of that half is committed (the victim is then
    # most likely mid-batch: `lag_at_kill`), the rest after the kill — so the survivor
    # must take the victim's partitions over to finish, however fast the machine
    cut1, cut2 = len(records) // 5, len(records) * 7 // 10
    first, middle, rest = records[:cut1], records[cut1:cut2], records[cut2:]
    async with open_scenario(private_servers, "replicas") as sc:
        await sc.topics.publish(first)
        replicas = [sc.start_indexer("a", "a"), sc.start_indexer("b", "b")]
        members = await wait_members(sc, 2, 90)
        await sc.topics.publish(middle)
        await wait_progress(sc, len(first) + len(middle) // 4, 90)
        lag_at_kill, committed_at_kill, _ = await sc.topics.lag()
        victim = rng.choice(replicas)
        survivor = next(p for p in replicas if p is not victim)
        victim.kill9()
        await sc.topics.publish(rest)
        fault_end = time.monotonic()
        converged: float | None = None
        with contextlib.suppress(AssertionError):  # the full check below says what is wrong
            converged = await wait_converged(sc.topics, sc.client, expected, CONVERGE_S)
        report = await full_check(sc, expected)
        _, committed, _ = await sc.topics.lag()
        figures = figures_of(records, expected, committed, report, await sc.topics.dead_letters())
        figures.update(
            members_before_kill=members,
            committed_at_kill=committed_at_kill,
            lag_at_kill=lag_at_kill,
            members_after=await group_members(sc),
            recovery_s=None if converged is None else round(converged - fault_end, 1),
            scenario_s=round(time.monotonic() - started, 1),
        )
        record_figures("replica-sigkill", figures)
        assert survivor.alive(), survivor.log_text()[-3000:]
    assert members == 2, "both replicas must have joined the group before the kill"
    assert figures["members_after"] == 1
    assert_exact(report)
    assert converged is not None, f"no convergence within {CONVERGE_S}s"
    assert figures["dead_lettered_distinct"] == 5


async def wait_members(sc: Scenario, want: int, seconds: float) -> int:
    """Wait until the consumer group has `want` members; how many it has."""
    deadline = time.monotonic() + seconds
    members = 0
    while time.monotonic() < deadline:
        members = await retry_async("describing the group", lambda: group_members(sc), 30)
        if members >= want:
            break
        await asyncio.sleep(0.5)
    return members


async def group_members(sc: Scenario) -> int:
    """How many members the consumer group has (Kafka's DescribeGroups)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=sc.wiring.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([sc.wiring.kafka.group_id])
    finally:
        await admin.close()
    groups = [g for resp in described for g in resp.groups]
    return sum(len(g[5]) if isinstance(g, tuple) else len(g["members"]) for g in groups)


# --------------------------------------------------------------------------------------------
# 6. an indexer started while Elasticsearch is unreachable: it commits nothing, and once
# restarted against a reachable Elasticsearch it converges (crash-loop under a supervisor)
# --------------------------------------------------------------------------------------------
async def test_indexer_started_while_elasticsearch_unreachable(
    private_servers: PrivateServers,
) -> None:
    seed = 707
    dataset, records = stream(seed, 1_500)
    expected = expected_state(dataset, records)
    started = time.monotonic()
    async with open_scenario(private_servers, "startdown") as sc:
        await sc.topics.publish(records)
        # a port nothing listens on: Elasticsearch "down" without stopping the shared-by-
        # the-suite private node
        sc.wiring.es_url = "http://127.0.0.1:9"
        doomed = sc.start_indexer("unreachable")
        exit_code = await asyncio.to_thread(doomed.wait_exit, 30)
        behaviour = f"exited {exit_code}" if exit_code is not None else "kept waiting"
        if exit_code is None:
            doomed.stop()
        _, committed_while_down, _ = await sc.topics.lag()
        sc.wiring.es_url = private_servers.es_url
        fault_end = time.monotonic()
        proc = sc.start_indexer("reachable")
        converged = await wait_converged(sc.topics, sc.client, expected, CONVERGE_S)
        report = await full_check(sc, expected)
        _, committed, _ = await sc.topics.lag()
        figures = figures_of(records, expected, committed, report, await sc.topics.dead_letters())
        figures.update(
            unreachable_start=behaviour,
            committed_while_unreachable=committed_while_down,
            recovery_s=round(converged - fault_end, 1),
            scenario_s=round(time.monotonic() - started, 1),
        )
        record_figures("indexer-start-es-unreachable", figures)
        assert proc.alive(), proc.log_text()[-3000:]
    assert committed_while_down == 0
    assert_exact(report)
