"""Indexer phases of the benchmark beside the main load: a noisy stream, two replicas,
a restart after SIGKILL, the state's size and the writes per final document.

Every phase runs real indexer processes (`python -m artifact_search.cli indexer`) against the
local Kafka and Elasticsearch, on unique topics and index prefixes removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from datagen.dataset import Dataset
from services.config import KafkaSettings
from services.contract import encode_event
from services.es.indices import IndexNames
from tests.benchmarks.ceiling import bulk_ceiling
from tests.benchmarks.kafka_io import (
    KAFKA,
    create_topics,
    delete_topics,
    end_offsets,
    kafka_settings,
    lag,
    make_producer,
    publish,
)
from tests.benchmarks.procs import REPO_ROOT, Child, free_port

Record = tuple[str, bytes, Any]
ES_URL = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200").rstrip("/")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def tear_down(children: Sequence[Child], topics: list[str], index_prefix: str) -> None:
    """Stop the children (last started first), delete the topics and the indices of a stack
    (best effort: a benchmark's result must not be lost to its cleanup)."""
    for child in reversed(children):
        child.stop()
    with contextlib.suppress(Exception):
        if topics:
            await delete_topics(topics)
    async with httpx.AsyncClient(timeout=60) as http:
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(
                f"{ES_URL}/{index_prefix}*",
                params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            )


def stack_env(kafka: KafkaSettings, names: IndexNames, es_url: str = ES_URL) -> dict[str, str]:
    """Environment of the API and indexer processes of one stack."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "KAFKA_GROUP_ID": kafka.group_id,
        "ELASTICSEARCH_URL": es_url,
        "ELASTICSEARCH_INDEX_PREFIX": names.prefix,
        "INDEXER_METRICS_PORT": "0",
    }


def indexer_child(
    env: dict[str, str], log_dir: Path, index: int, profile_to: Path | None = None
) -> Child:
    """Indexer replica `index`: its own state directory, instance id and metrics port."""
    port = free_port()
    own = {
        **env,
        "INDEXER_STATE_DIR": str(log_dir / f"state-{index}"),
        "INDEXER_INSTANCE_ID": f"bench-{index}",
        "INDEXER_STATIC_MEMBERSHIP": "true",  # as in the StatefulSet: restarts keep partitions
        "INDEXER_METRICS_HOST": "127.0.0.1",
        "INDEXER_METRICS_PORT": str(port),
    }
    child = Child(
        f"indexer-{index}", ["-m", "artifact_search.cli", "indexer"], own, log_dir, profile_to
    )
    child.metrics_port = port  # type: ignore[attr-defined]
    return child


def instances(children: Sequence[Child]) -> list[str]:
    """The instance ids of indexer children (their parents' progress is watched)."""
    return [f"bench-{c.name.rsplit('-', 1)[-1]}" for c in children]


def entity_and_member_topics(topics: Sequence[str]) -> list[str]:
    """`create_topics`' list without the dead-letter topic (second to last)."""
    return [*topics[:-2], topics[-1]]


async def metric(child: Child, name: str, labels: str = "") -> float:
    """A counter of an indexer child's /metrics (summed over label sets matching `labels`)."""
    port = child.metrics_port  # type: ignore[attr-defined]
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            match = re.match(r"^[^ ]+ ([0-9.e+-]+)$", line)
            if match:
                total += float(match.group(1))
    return total


async def writes_per_document(children: Child | Sequence[Child], documents: int) -> float | None:
    """Documents the indexer(s) sent to Elasticsearch per final document (1.0 is ideal)."""
    group = [children] if isinstance(children, Child) else list(children)
    try:
        sent = sum([await metric(c, "indexer_documents_total") for c in group])
    except httpx.HTTPError:
        return None
    return round(sent / documents, 3) if documents else None


def state_size(path: Path, dataset: Dataset) -> dict[str, Any]:
    """Bytes of an indexer's state directory and the entities it holds."""
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    parents = sum(
        len(dataset.entities(e)) + len(dataset.deleted.get(e, []))
        for e in ("flow", "deployment", "flow_run", "task_run")
    )
    artifacts = len(dataset.artifacts) + len(dataset.deleted.get("artifact", []))
    collections = len(dataset.collections())
    entities = parents + artifacts + collections
    return {
        "bytes": size,
        "parents": parents,
        "artifacts": artifacts,
        "collections": collections,
        "entities": entities,
        "bytes_per_entity": round(size / entities, 1),
    }


async def wait_consuming(
    producer: AIOKafkaProducer,
    kafka: KafkaSettings,
    names: IndexNames,
    children: Sequence[Child],
    http: httpx.AsyncClient,
    timeout_s: float = 300,
) -> None:
    """A probe artifact (no key, no runs) tells that the indexer consumes; it is deleted
    again (a tombstone) so it counts nowhere."""
    probe = str(uuid.uuid4())
    art = {
        "id": probe,
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:00:00Z",
        "type": "bench-probe",
    }
    await publish(
        producer,
        kafka,
        [("artifact", probe.encode(), encode_event("artifact", probe, "upsert", 1, art))],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        for child in children:
            child.check()
        resp = await http.get(f"{ES_URL}/{names.artifacts}/_doc/{probe}")
        if resp.status_code == 200 and resp.json().get("found"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the indexer did not consume the probe in {timeout_s:.0f}s")
        await asyncio.sleep(0.2)
    await publish(producer, kafka, [("artifact", probe.encode(), None)])


async def live_count(http: httpx.AsyncClient, index: str) -> int:
    resp = await http.post(f"{ES_URL}/{index}/_count", json={"query": {"term": {"live": True}}})
    return int(resp.json().get("count", -1)) if resp.status_code == 200 else -1


async def wait_converged(
    kafka: KafkaSettings,
    names: IndexNames,
    topics: Sequence[str],
    children: Sequence[Child],
    http: httpx.AsyncClient,
    want: tuple[int, int],
    timeout_s: float,
) -> float:
    """Wait until nothing is behind and the live artifact and collection counts are `want`;
    the perf_counter time it happened."""
    ends = await end_offsets(entity_and_member_topics(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    deadline = time.perf_counter() + timeout_s
    last = 0.0
    try:
        while True:
            for child in children:
                child.check()
            behind = await lag(kafka, admin, ends, instances(children))
            if behind == 0:
                got = (
                    await live_count(http, names.artifacts),
                    await live_count(http, names.collections),
                )
                if got == want:
                    return time.perf_counter()
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"not converged within {timeout_s:.0f}s ({behind} behind)")
            if now - last > 15:
                _log(f"    {behind:,} records behind")
                last = now
            await asyncio.sleep(0.25)
    finally:
        await admin.close()


async def side_load(
    load_timeout_s: float,
    n: int,
    label: str,
    dataset: Dataset,
    records: Sequence[Record],
    replicas: int,
    http: httpx.AsyncClient,
    backlog: bool = False,
    ceiling: bool = False,
) -> dict[str, Any]:
    """Load `records` with `replicas` indexer processes into fresh topics and indices,
    published while they consume (as the main load), or with `backlog` published first
    and consumed by indexers started afterwards (timed from their start: an indexer
    deployed on topics that hold the history); removed afterwards. `ceiling`: the raw
    `_bulk` of the loaded documents too, once the indexers are stopped."""
    prefix = f"bench-{n}-{label}-{uuid.uuid4().hex[:6]}"
    log_dir = REPO_ROOT / ".local" / "bench" / prefix
    kafka = kafka_settings(prefix + ".")
    names = IndexNames(prefix + "-")
    topics = await create_topics(kafka)
    env = stack_env(kafka, names)
    children: list[Child] = []
    _log(f"  {label}: {len(records):,} events, {replicas} indexer process(es)")
    try:
        producer = await make_producer()
        try:
            if backlog:
                await publish(producer, kafka, records)
                release_memory()
                t0 = time.perf_counter()
                children += [indexer_child(env, log_dir, i) for i in range(replicas)]
            else:
                children += [indexer_child(env, log_dir, i) for i in range(replicas)]
                await wait_consuming(producer, kafka, names, children, http)
                t0 = time.perf_counter()
                await publish(producer, kafka, records)
        finally:
            await producer.stop()
        want = (len(dataset.artifacts), len(dataset.collections()))
        done = await wait_converged(kafka, names, topics, children, http, want, load_timeout_s)
        seconds = done - t0
        docs = sum(want) + len(dataset.deleted.get("artifact", []))
        out = {
            "events": len(records),
            "replicas": replicas,
            "backlog": backlog,
            "seconds": round(seconds, 2),
            "events_per_s": round(len(records) / seconds),
            "writes_per_document": await writes_per_document(children, docs),
            "rss_mib": [c.peak_rss_mib() for c in children],
        }
        _log(f"    {label}: {seconds:.1f}s, {out['events_per_s']:,} events/s")
        if ceiling:
            for child in reversed(children):
                child.stop()
            out["ceiling"] = await bulk_ceiling(names, http, seconds, len(records))
            out["indexer_vs_bulk"] = out["ceiling"]["indexer_vs_bulk"]
        return out
    finally:
        await tear_down(children, topics, names.prefix)


async def restart_after_kill(
    stack: Any,
    dataset: Dataset,
    http: httpx.AsyncClient,
    opts: Any,
    log_dir: Path,
    make_records: Callable[[int], list[Record]],
) -> dict[str, Any]:
    """New keyless artifacts are published, the indexer is SIGKILLed right away (while
    behind) and restarted on its state directory: seconds from the restart until it is
    caught up, and how many records it applied (all of them again = a full replay)."""
    extra = max(5_000, stack.n // 20)
    records = make_records(extra)
    assert {r[0] for r in records} == {"artifact"}, "restart records are new keyless artifacts"
    ends = await end_offsets(entity_and_member_topics(stack.topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        idle_before = False
        for _ in range(int(opts.idle_timeout_s * 4)):
            if await lag(stack.kafka, admin, ends, ["bench-0"]) == 0:
                idle_before = True
                break
            await asyncio.sleep(0.25)
        if not idle_before:
            _log("  restart: WARNING the indexer was still behind before the new records")
        # counted while the last writes are not searchable yet (or deferred documents are
        # still being written), `want` would be short and never reached (seen at 1M): count
        # after a refresh, until two counts a second apart agree
        counts: tuple[int, int] | None = None
        stable = False
        for _ in range(120):
            await http.post(f"{ES_URL}/{stack.names.prefix}*/_refresh")
            now = (
                await live_count(http, stack.names.artifacts),
                await live_count(http, stack.names.collections),
            )
            if now == counts:
                stable = True
                break
            counts = now
            await asyncio.sleep(1.0)
        assert counts is not None
        if not stable:  # the wait below may then time out, or end on a moving count
            _log("  restart: WARNING the live counts never held still for a second")
        want = (counts[0] + extra, counts[1])
        producer = await make_producer()
        try:
            await publish(producer, stack.kafka, records)
        finally:
            await producer.stop()
        ends = await end_offsets(entity_and_member_topics(stack.topics))
        behind = await lag(stack.kafka, admin, ends, ["bench-0"])
    finally:
        await admin.close()
    stack.indexer.proc.kill()
    stack.indexer.proc.wait(30)
    _log(f"  restart: SIGKILLed with {behind:,} records behind; restarting on its state")
    t0 = time.perf_counter()
    child = indexer_child(stack_env(stack.kafka, stack.names), log_dir, 0)
    stack.indexer = child
    done = await wait_converged(stack.kafka, stack.names, stack.topics, [child], http, want, 600)
    applied = await metric(child, "indexer_events_total")
    out = {
        "events_after_kill": len(records),
        "lag_at_kill": behind,
        "restart_to_caught_up_s": round(done - t0, 2),
        "records_applied_after_restart": int(applied),
        "replayed_from_zero": applied > len(records) * 2 + 1000,
        # how far the figure can be trusted: False means the kill did not start from rest
        "idle_before_kill": idle_before,
        "counts_stable_before_kill": stable,
    }
    _log(f"    caught up {out['restart_to_caught_up_s']}s after the restart")
    return out


def release_memory() -> None:
    """Give freed memory back to the operating system (glibc keeps it otherwise): the
    benchmark's own Python must not squeeze the page cache Elasticsearch, Kafka and the
    indexer's RocksDB read through."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def run_side_load(
    n: int,
    seed: int,
    label: str,
    noisy: bool,
    replicas: int,
    load_timeout_s: float,
    backlog: bool = False,
    ceiling: bool = False,
) -> dict[str, Any]:
    """`side_load` in a child process: it generates its own dataset and stream and exits
    afterwards, so neither stays in the runner's memory (gigabytes at 1M)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.benchmarks.side",
        *("--scale", str(n), "--seed", str(seed), "--label", label),
        *("--replicas", str(replicas), "--load-timeout", str(load_timeout_s)),
        *(("--noisy",) if noisy else ()),
        *(("--backlog",) if backlog else ()),
        *(("--ceiling",) if ceiling else ()),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"side load {label} failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def main() -> None:
    """`python -m tests.benchmarks.side --scale N ...`: one side load; JSON on the last line."""
    import argparse

    from datagen.dataset import DatasetScale, generate_dataset
    from datagen.events import HARD, NONE, dataset_records

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--label", required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--noisy", action="store_true")
    parser.add_argument("--load-timeout", type=float, default=3600.0)
    parser.add_argument(
        "--backlog", action="store_true", help="publish everything, then start the indexers"
    )
    parser.add_argument(
        "--ceiling", action="store_true", help="and the raw _bulk of the loaded documents"
    )
    args = parser.parse_args()
    dataset = generate_dataset(args.seed, DatasetScale.for_artifacts(args.scale))
    records = dataset_records(dataset, args.seed, HARD if args.noisy else NONE)

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await side_load(
                args.load_timeout,
                args.scale,
                args.label,
                dataset,
                records,
                args.replicas,
                http,
                args.backlog,
                args.ceiling,
            )

    print(json.dumps(asyncio.run(go())), flush=True)


if __name__ == "__main__":
    main()
