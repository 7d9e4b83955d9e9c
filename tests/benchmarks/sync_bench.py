"""Live sync from Prefect (`sync-prefect`, change data capture): the issue's three figures.

``python -m tests.benchmarks.sync_bench [--artifacts 20000] [--rate 20] [--seconds 30]
[--snapshot-only]`` runs this part alone (JSON on stdout, ``--out FILE`` to keep it; only the
first figure with ``--snapshot-only``); ``tests/benchmarks/run.py`` runs it once per benchmark
(after the scales) and RESULTS.md reports it.

One Prefect database, cloned from the template Prefect's own migrations built
(tests/sync/conftest.py) and filled with the seeded dataset of ``--artifacts`` artifacts
by direct SQL (the conformance oracle's loader); a real Prefect 3.9.1 server on it
(``prefect server start``, its data-changing services off as in tests/sync). Then:

1. **initial snapshot vs backfill**: ``backfill-prefect`` (the CLI, one process) publishes
   the database to its own topics; then ``sync-prefect`` (the CLI) starts on a new slot
   and publishes its snapshot to the stack's topics. Each is timed from process start to
   its end (backfill: exit; bridge: /readyz, i.e. snapshot published and streaming), so
   both include the interpreter's start; CPU is the process's own (rusage / /proc). Only
   Kafka is written in this phase: the indexer starts afterwards.
2. **commit -> searchable**: the indexer and the query API start and index the snapshot;
   then flow runs with artifacts are created through Prefect's REST API at ``--rate``
   artifacts/s for ``--seconds`` (five keyed markdown artifacts per flow run, the run
   set RUNNING on creation and COMPLETED after its fifth artifact), open loop. Latency =
   first time POST /api/artifacts/filter on the query API (key ``any_``, polled every
   50 ms) returns the artifact, minus the moment Prefect's create call returned (its
   transaction is committed by then); also from the artifact's ``created`` (set inside
   the transaction: an upper bound), and to the artifact's event on the Kafka topic (the
   bridge's share).
3. **costs during 2**: the bridge's CPU time (/proc) per 1,000 changes it published
   (events of the stream phase; also net of its idle CPU rate, measured for 10 s just
   before), the walsender's CPU (its pid from pg_stat_activity, /proc) and the WAL it read
   (``sent_lsn`` of pg_stat_replication) and the WAL the server wrote
   (``pg_current_wal_lsn``) over the same window. The PostgreSQL server is shared:
   WAL written by other databases is decoded (and filtered out) by the walsender too, so
   these are upper bounds of what the bridge alone costs.

Everything is removed at the end: the database (and with it the slot and the
publication), topics, indices, child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from datagen.dataset import DatasetScale, generate_dataset
from services.es.indices import IndexNames
from services.prefect.tables import TABLES
from tests.benchmarks.kafka_io import (
    KAFKA,
    create_topics,
    delete_topics,
    kafka_settings,
)
from tests.benchmarks.procs import REPO_ROOT, Child, free_port, wait_http_ok
from tests.benchmarks.run import pct
from tests.benchmarks.side import indexer_child, metric, stack_env, tear_down
from tests.benchmarks.sync_report import (
    backfill_rows_s,
    net_of_idle,
    per_thousand,
    snapshot_rows_s,
)
from tests.conformance.oracle import _with_database as with_database
from tests.conformance.oracle import load_dataset
from tests.kafka_helpers import partitions
from tests.sync.conftest import clone_database, drop_database, ensure_template
from tests.sync.test_live_prefect import prefect_server

PG_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:55432/postgres")
ARTIFACTS_PER_RUN = 5
POLL_S = 0.05
DRAIN_S = 30.0
IDLE_S = 10.0
TICK_S = os.sysconf("SC_CLK_TCK")


def _log(msg: str) -> None:
    print(f"[sync-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- measuring --------------------------------------------------------------------------


def latency_summary(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / max in seconds, rounded to the millisecond."""
    if not values:
        return {"p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    return {
        "p50_s": round(pct(values, 0.5), 3),
        "p95_s": round(pct(values, 0.95), 3),
        "p99_s": round(pct(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S  # utime, stime (fields 14, 15)


# ---- the Prefect database and server --------------------------------------------------------


async def fill_database(dsn: str, seed: int, artifacts: int) -> dict[str, Any]:
    """The seeded dataset in a fresh clone of Prefect's migrated template."""
    started = time.perf_counter()
    template = await ensure_template(PG_DSN)
    database = dsn.rsplit("/", 1)[1]
    await clone_database(PG_DSN, template, database)
    dataset = generate_dataset(seed, DatasetScale.for_artifacts(artifacts))
    conn = await asyncpg.connect(dsn)
    try:
        await load_dataset(conn, dataset)
        rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()
    return {"rows": rows, "fill_s": round(time.perf_counter() - started, 1)}


async def wait_prefect(client: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the Prefect server exited (see its log)")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/api/health")).status_code == 200:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("the Prefect server did not answer within 180 s")


# ---- phase 1: snapshot vs backfill -------------------------------------------------------


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rates(
    events: int, seconds: float, cpu_s: float | None, rows_s: float | None
) -> dict[str, Any]:
    return {
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds) if seconds else None,
        "rows_s": rows_s,
        "rows_events_per_s": round(events / rows_s) if rows_s else None,
        "cpu_s": round(cpu_s, 2) if cpu_s is not None else None,
        "cpu_ms_per_1000": per_thousand(cpu_s, events),
    }


async def run_backfill(dsn: str, prefix: str, events: int, log_dir: Path) -> dict[str, Any]:
    """`backfill-prefect` into its own topics (deleted afterwards): time and CPU to exit."""
    kafka = kafka_settings(prefix + "-backfill.")
    topics = await create_topics(kafka)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "BACKFILL_POSTGRES_DSN": dsn,
    }
    try:
        cpu0 = _children_cpu_s()
        child = Child(
            "backfill",
            ["-m", "artifact_search.cli", "backfill-prefect", "--checkpoint", ""],
            env,
            log_dir,
        )
        t0 = time.perf_counter()
        code = await asyncio.to_thread(child.proc.wait, 3600)
        seconds = time.perf_counter() - t0
        child.stop()
        if code != 0:
            raise RuntimeError(f"backfill-prefect exited with {code}:\n{child.log_tail()}")
        rows_s = backfill_rows_s(child.log_path.read_text(errors="replace"))
        return _rates(events, seconds, _children_cpu_s() - cpu0, rows_s)
    finally:
        with contextlib.suppress(Exception):
            await delete_topics(topics)


def bridge_child(env: dict[str, str], dsn: str, slot: str, log_dir: Path) -> Child:
    """`sync-prefect` (the CLI) on its own slot, publication, state file and metrics port."""
    port = free_port()
    child = Child(
        "sync-prefect",
        [
            "-m",
            "artifact_search.cli",
            "sync-prefect",
            *("--slot", slot, "--publication", slot),
            *("--state-file", str(log_dir / "sync.state.json"), "--metrics-port", str(port)),
        ],
        {**env, "SYNC_POSTGRES_DSN": dsn, "SYNC_METRICS_HOST": "127.0.0.1"},
        log_dir,
    )
    child.metrics_port = port  # type: ignore[attr-defined]
    return child


# ---- phase 2 and 3: commit -> searchable, and what it costs ------------------------------


class Load:
    """Flow runs with artifacts created through Prefect's REST API, open loop."""

    def __init__(self, prefect: httpx.AsyncClient, tag: str) -> None:
        self.prefect = prefect
        self.tag = tag
        self.flow_id = ""
        self.returned: dict[str, float] = {}  # key -> perf_counter when the create returned
        self.created: dict[str, float] = {}  # key -> the artifact's `created`, epoch seconds
        self.call_s: list[float] = []
        self.errors = 0
        self.late = 0

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self.prefect.post(path, json=body)
        if resp.status_code >= 300:
            self.errors += 1
            raise RuntimeError(f"Prefect {path}: {resp.status_code} {resp.text[:300]}")
        answer: dict[str, Any] = resp.json()
        return answer

    async def start(self) -> None:
        self.flow_id = (await self._post("/api/flows/", {"name": f"sync-bench-{self.tag}"}))["id"]

    async def flow_run(self, run: int, start: float, rate: float) -> None:
        """Run `run`: created RUNNING, its five artifacts each at its due time, COMPLETED."""
        first = run * ARTIFACTS_PER_RUN
        fr = await self._post(
            "/api/flow_runs/",
            {
                "flow_id": self.flow_id,
                "name": f"sync-bench-{self.tag}-{run}",
                "state": {"type": "RUNNING", "name": "Running"},
            },
        )
        for i in range(first, first + ARTIFACTS_PER_RUN):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1:
                self.late += 1
            key = f"sync-{self.tag}-{i}"
            t = time.perf_counter()
            art = await self._post(
                "/api/artifacts/",
                {
                    "key": key,
                    "type": "markdown",
                    "data": f"# run {run}\n\nartifact {i} of the sync benchmark",
                    "flow_run_id": fr["id"],
                },
            )
            done = time.perf_counter()
            self.call_s.append(done - t)
            self.returned[key] = done
            self.created[key] = datetime.fromisoformat(art["created"]).timestamp()
        await self._post(
            f"/api/flow_runs/{fr['id']}/set_state",
            {"state": {"type": "COMPLETED", "name": "Completed"}, "force": True},
        )


async def poll_visible(
    api: httpx.AsyncClient,
    load: Load,
    seen: dict[str, tuple[float, float]],
    until: asyncio.Event,
) -> None:
    """Mark each key (perf_counter, epoch seconds) when the query API first returns it;
    stops once `until` is set and nothing is pending, or `DRAIN_S` after `until`."""
    drain_deadline: float | None = None
    while True:
        pending = [k for k in load.returned if k not in seen]
        if until.is_set():
            drain_deadline = drain_deadline or time.perf_counter() + DRAIN_S
            if not pending or time.perf_counter() > drain_deadline:
                return
        if pending:
            body = {"artifacts": {"key": {"any_": pending[:200]}}, "limit": 200}
            resp = await api.post("/api/artifacts/filter", json=body)
            resp.raise_for_status()
            now, wall = time.perf_counter(), time.time()
            for art in resp.json():
                key = art["key"]
                seen.setdefault(key, (now, wall))
        await asyncio.sleep(POLL_S)


async def watch_topic(
    consumer: AIOKafkaConsumer, arrived: dict[str, float], until: asyncio.Event
) -> None:
    """When each artifact key's first event reaches Kafka (the bridge's share of the
    latency); the consumer is positioned at the topic's end before the load starts."""
    while not until.is_set():
        batches = await consumer.getmany(timeout_ms=100)
        now = time.perf_counter()
        for records in batches.values():
            for record in records:
                if record.value is None:
                    continue
                key = (orjson.loads(record.value).get("data") or {}).get("key")
                if key:
                    arrived.setdefault(key, now)


async def postgres_meters(conn: Any, database: str) -> dict[str, Any]:
    """The walsender of `database`: pid, CPU, WAL sent; and the server's WAL position."""
    row = await conn.fetchrow(
        "SELECT a.pid, r.sent_lsn, pg_current_wal_lsn() AS wal FROM pg_stat_activity a "
        "LEFT JOIN pg_stat_replication r ON r.pid = a.pid "
        "WHERE a.backend_type = 'walsender' AND a.datname = $1",
        database,
    )
    if row is None:
        return {"pid": None, "cpu_s": None, "sent_lsn": None, "wal": None}
    return {
        "pid": row["pid"],
        "cpu_s": proc_cpu_s(row["pid"]),
        "sent_lsn": row["sent_lsn"],
        "wal": row["wal"],
    }


async def idle_cpu(bridge: Child, pg: Any, database: str) -> dict[str, float | None]:
    """CPU seconds per second of the bridge and the walsender with no load (`IDLE_S`)."""
    b0, w0 = proc_cpu_s(bridge.pid), (await postgres_meters(pg, database))["cpu_s"]
    await asyncio.sleep(IDLE_S)
    b1, w1 = proc_cpu_s(bridge.pid), (await postgres_meters(pg, database))["cpu_s"]
    return {
        "bridge": round((b1 - b0) / IDLE_S, 4) if b0 is not None and b1 is not None else None,
        "walsender": round((w1 - w0) / IDLE_S, 4) if w0 is not None and w1 is not None else None,
    }


async def lsn_bytes(conn: Any, a: str | None, b: str | None) -> int | None:
    if a is None or b is None:
        return None
    return int(await conn.fetchval("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)", b, a))


async def live(
    prefect: httpx.AsyncClient,
    api: httpx.AsyncClient,
    bridge: Child,
    pg: Any,
    database: str,
    artifact_topic: str,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Phases 2 and 3 (see the module docstring)."""
    load = Load(prefect, uuid.uuid4().hex[:8])
    await load.start()
    seen: dict[str, tuple[float, float]] = {}
    runs = max(1, int(rate * seconds) // ARTIFACTS_PER_RUN)
    idle = await idle_cpu(bridge, pg, database)
    events0 = await metric(bridge, "sync_prefect_events_total", 'phase="stream"')
    cpu0 = proc_cpu_s(bridge.pid)
    pg0 = await postgres_meters(pg, database)
    done, watched = asyncio.Event(), asyncio.Event()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(artifact_topic, n) for n in await partitions(consumer, artifact_topic)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:  # resolve the end now, before the first artifact exists
        await consumer.position(tp)
    in_kafka: dict[str, float] = {}
    watcher = asyncio.create_task(watch_topic(consumer, in_kafka, watched))
    poller = asyncio.create_task(poll_visible(api, load, seen, done))
    start = time.perf_counter()
    tasks = []
    for run in range(runs):  # run r starts with its first artifact's due time
        delay = start + run * ARTIFACTS_PER_RUN / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        bridge.check()
        tasks.append(asyncio.create_task(load.flow_run(run, start, rate)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    send_s = time.perf_counter() - start
    done.set()
    await poller
    watched.set()
    await watcher
    await consumer.stop()
    await asyncio.sleep(2)  # the last COMPLETED states reach the bridge
    events = int(await metric(bridge, "sync_prefect_events_total", 'phase="stream"') - events0)
    cpu1 = proc_cpu_s(bridge.pid)
    pg1 = await postgres_meters(pg, database)
    failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    sent = len(load.returned)
    lat = [seen[k][0] - load.returned[k] for k in seen]
    from_created = [seen[k][1] - load.created[k] for k in seen]
    bridge_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    walsender_cpu = (
        pg1["cpu_s"] - pg0["cpu_s"]
        if pg0["pid"] == pg1["pid"] and None not in (pg0["cpu_s"], pg1["cpu_s"])
        else None
    )
    window = time.perf_counter() - start
    sent_bytes = await lsn_bytes(pg, pg0["sent_lsn"], pg1["sent_lsn"])
    wal_bytes = await lsn_bytes(pg, pg0["wal"], pg1["wal"])
    return {
        "latency": {
            "rate_target": rate,
            "seconds": seconds,
            "flow_runs": runs,
            "sent": sent,
            "rate_achieved": round(sent / send_s, 1) if send_s else None,
            "late_by_over_1s": load.late,
            "failed_calls": len(failures),
            "first_failure": failures[0][:300] if failures else None,
            "visible": len(seen),
            "missing_after_drain": sent - len(seen),
            **latency_summary(lat),
            "from_created": latency_summary(from_created),
            "to_kafka": latency_summary(
                [in_kafka[k] - load.returned[k] for k in in_kafka if k in load.returned]
            ),
            "prefect_call": latency_summary(load.call_s),
            "poll_interval_s": POLL_S,
        },
        "cost": {
            "window_s": round(window, 1),
            "changes": events,
            "bridge_cpu_s": round(bridge_cpu, 2) if bridge_cpu is not None else None,
            "bridge_cpu_ms_per_1000": per_thousand(bridge_cpu, events),
            "bridge_idle_cpu_per_s": idle["bridge"],
            "bridge_net_cpu_ms_per_1000": per_thousand(
                net_of_idle(bridge_cpu, idle["bridge"], window), events
            ),
            "walsender_cpu_s": round(walsender_cpu, 2) if walsender_cpu is not None else None,
            "walsender_cpu_ms_per_1000": per_thousand(walsender_cpu, events),
            "walsender_idle_cpu_per_s": idle["walsender"],
            "wal_sent_bytes": sent_bytes,
            "wal_written_bytes": wal_bytes,
            "wal_sent_bytes_per_change": round(sent_bytes / events)
            if sent_bytes and events
            else None,
        },
    }


async def wait_indexed(api: httpx.AsyncClient, children: list[Child], want: int) -> float:
    """Seconds until the query API counts `want` artifacts (the snapshot indexed)."""
    t0 = time.perf_counter()
    while True:
        for child in children:
            child.check()
        resp = await api.post("/api/artifacts/count", json={})
        if resp.status_code == 200 and int(resp.json()) >= want:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > 3600:
            raise TimeoutError(f"the snapshot was not indexed within an hour ({resp.text[:100]})")
        await asyncio.sleep(1)


# ---- the whole part ------------------------------------------------------------------------


async def sync_bench(
    artifacts: int,
    rate: float,
    seconds: float,
    seed: int = 7,
    log_dir: Path | None = None,
    snapshot_only: bool = False,
) -> dict[str, Any]:
    """The three figures on one Prefect database of `artifacts` artifacts (only the first,
    the snapshot against the backfill, with `snapshot_only`)."""
    hexid = uuid.uuid4().hex[:8]
    prefix = f"bench-sync-{hexid}"
    database, slot = f"bench_sync_{hexid}", f"bench_sync_{hexid}"
    dsn = with_database(PG_DSN, database)
    log_dir = (log_dir or Path(tempfile.mkdtemp(prefix="sync-bench-"))) / prefix
    log_dir.mkdir(parents=True, exist_ok=True)  # fresh: the indexer's and bridge's state
    out: dict[str, Any] = {
        "artifacts": artifacts,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_avg_start": os.getloadavg(),
    }
    kafka = kafka_settings(prefix + ".")
    names = IndexNames(prefix + "-")
    env = stack_env(kafka, names)
    children: list[Child] = []
    topics: list[str] = []
    pg = await asyncpg.connect(PG_DSN)
    home = tempfile.TemporaryDirectory(prefix="prefect-home-")
    try:
        _log(f"filling {database} with {artifacts:,} artifacts")
        out["database"] = await fill_database(dsn, seed, artifacts)
        rows = sum(out["database"]["rows"].values())
        prefect_port = free_port()
        with prefect_server(dsn, Path(home.name), prefect_port, log_dir / "prefect.log") as server:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{prefect_port}", timeout=60
            ) as prefect:
                await wait_prefect(prefect, server)
                _log(f"backfill-prefect: {rows:,} rows")
                backfill = await run_backfill(dsn, prefix, rows, log_dir)
                _log(f"  {backfill}")
                topics = await create_topics(kafka)
                _log("sync-prefect: snapshot")
                bridge = bridge_child(env, dsn, slot, log_dir)
                children.append(bridge)
                t0 = time.perf_counter()
                url = f"http://127.0.0.1:{bridge.metrics_port}/readyz"  # type: ignore[attr-defined]
                await wait_http_ok(bridge, url, 3600)
                seconds_to_ready = time.perf_counter() - t0
                await asyncio.sleep(0.5)  # the log line after the snapshot is flushed
                rows_s = snapshot_rows_s(bridge.log_path.read_text(errors="replace"))
                snapshot = _rates(rows, seconds_to_ready, proc_cpu_s(bridge.pid), rows_s)
                _log(f"  {snapshot}")
                out["snapshot"] = {
                    "bridge": snapshot,
                    "backfill": backfill,
                    "bridge_over_backfill": round(
                        snapshot["events_per_s"] / backfill["events_per_s"], 2
                    ),
                }
                if snapshot_only:
                    out["load_avg_end"] = os.getloadavg()
                    return out
                api_port = free_port()
                api = Child(
                    "api",
                    ["-m", "artifact_search.cli", "api", "--port", str(api_port)],
                    env,
                    log_dir,
                )
                children += [indexer_child(env, log_dir, 0), api]
                api_url = f"http://127.0.0.1:{api_port}"
                await wait_http_ok(api, api_url + "/api/health", 120)
                async with httpx.AsyncClient(base_url=api_url, timeout=60) as query:
                    want = out["database"]["rows"]["artifact"]
                    out["snapshot_indexed_s"] = round(await wait_indexed(query, children, want), 1)
                    _log(f"snapshot indexed in {out['snapshot_indexed_s']} s; live: {rate}/s")
                    topic = kafka.topic_for("artifact")
                    out.update(
                        await live(prefect, query, bridge, pg, database, topic, rate, seconds)
                    )
                _log(f"  {out['latency']}\n  {out['cost']}")
    finally:
        await tear_down(children, topics, names.prefix)
        await drop_database(PG_DSN, database)
        await pg.close()
        home.cleanup()
    out["load_avg_end"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=int, default=20_000, help="artifacts in Prefect")
    parser.add_argument("--rate", type=float, default=20.0, help="artifacts per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument(
        "--snapshot-only", action="store_true", help="the snapshot and backfill figures only"
    )
    args = parser.parse_args()
    log_dir = REPO_ROOT / ".local" / "bench" / "sync"
    result = asyncio.run(
        sync_bench(args.artifacts, args.rate, args.seconds, args.seed, log_dir, args.snapshot_only)
    )
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
