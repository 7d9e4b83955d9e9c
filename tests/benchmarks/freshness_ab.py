"""Freshness of indexer variants side by side: publish -> searchable at steady rates.

`python -m tests.benchmarks.freshness_ab --artifacts 20000 --rates 200:10,1000:20
--variant off:INDEXER_REFRESH_AFTER_WRITE_S=0 --variant on: --rounds 3`

Each round runs every variant once, in turn (so they share the machine's conditions): a
fresh stack (topics, indices, the indexer and API processes, with the variant's
environment), the dataset's initial load, then `run.freshness` at each rate (the same
measurement as `make bench`), with the indexer's CPU seconds and step figures from its
`/metrics`, and a timeline of what the indexer, Elasticsearch and the host did every
half second. Raw results go to `--out` (JSON); a table is printed.

`--same-load`: one stack and one load for all variants; each variant restarts the indexer
on its state (a restart after a SIGKILL-free stop, as a rolling update does), round after
round, so the variants share the index, the state and the machine's page cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from datagen.dataset import Dataset, DatasetScale, generate_dataset
from datagen.events import dataset_records
from services.es.indices import IndexNames
from tests.benchmarks import run
from tests.benchmarks.ceiling import bulk_ceiling
from tests.benchmarks.kafka_io import create_topics, kafka_settings
from tests.benchmarks.procs import REPO_ROOT, Child, free_port, wait_http_ok
from tests.benchmarks.side import indexer_child, stack_env, tear_down

_METRICS = (
    "indexer_batch_seconds_sum",
    "indexer_batch_seconds_count",
    "indexer_batch_events_sum",
    "indexer_refreshes_total",
    "process_cpu_seconds_total",
    "indexer_deferred_documents_total",
    "indexer_documents_total",
    "indexer_batch_retries_total",
    "indexer_consumer_lag",
    "indexer_bulk_seconds_sum",
    "indexer_bulk_seconds_count",
)
"""Sums over label sets (`indexer_documents_total` counts written and superseded ones)."""

_ES_STATS = (
    "nodes.*.indices.merges.current,nodes.*.indices.merges.current_docs,"
    "nodes.*.indices.refresh.total,nodes.*.indices.refresh.total_time_in_millis,"
    "nodes.*.indices.indexing.index_total,nodes.*.indices.indexing.index_time_in_millis,"
    "nodes.*.jvm.mem.heap_used_percent,nodes.*.jvm.gc.collectors.*.collection_time_in_millis"
)


async def _scrape(http: httpx.AsyncClient, port: int) -> dict[str, float]:
    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        name = head.partition("{")[0]
        if name in _METRICS:
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def _es_stats(http: httpx.AsyncClient) -> dict[str, float]:
    resp = await http.get(
        f"{run.ES_URL}/_nodes/stats/indices,jvm", params={"filter_path": _ES_STATS}
    )
    out: dict[str, float] = {}
    for node in resp.json().get("nodes", {}).values():
        idx = node.get("indices", {})
        out["es_merges_current"] = idx.get("merges", {}).get("current", 0)
        out["es_merges_current_docs"] = idx.get("merges", {}).get("current_docs", 0)
        out["es_refreshes"] = idx.get("refresh", {}).get("total", 0)
        out["es_refresh_ms"] = idx.get("refresh", {}).get("total_time_in_millis", 0)
        out["es_index_ops"] = idx.get("indexing", {}).get("index_total", 0)
        out["es_index_ms"] = idx.get("indexing", {}).get("index_time_in_millis", 0)
        jvm = node.get("jvm", {})
        out["es_heap_pct"] = jvm.get("mem", {}).get("heap_used_percent", 0)
        for name, gc in jvm.get("gc", {}).get("collectors", {}).items():
            out[f"es_gc_{name}_ms"] = gc.get("collection_time_in_millis", 0)
    out.update(_host())
    return out


def _host() -> dict[str, float]:
    """The machine's dirty and written-back page cache (kB) and CPU jiffies by state."""
    out: dict[str, float] = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, _, rest = line.partition(":")
            if name in ("Dirty", "Writeback"):
                out[f"host_{name.lower()}_kb"] = float(rest.split()[0])
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    for name, value in zip(("user", "nice", "system", "idle", "iowait"), fields, strict=False):
        out[f"host_cpu_{name}"] = float(value)
    with open("/proc/vmstat") as vmstat:  # reads from disk: page-ins (kB), major faults
        for line in vmstat:
            name, _, value = line.partition(" ")
            if name in ("pgpgin", "pgmajfault"):
                out[f"host_{name}"] = float(value)
    return out


def _process(pid: int, label: str) -> dict[str, float]:
    """A process's major page faults, CPU jiffies and bytes read from disk (its state store
    served from the page cache or not)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        out[f"{label}_majflt"] = float(fields[9])
        out[f"{label}_cpu"] = float(fields[11]) + float(fields[12])
        with open(f"/proc/{pid}/io") as io:
            for line in io:
                name, _, value = line.partition(":")
                if name == "read_bytes":
                    out[f"{label}_read_bytes"] = float(value)
    except (OSError, IndexError, ValueError):
        pass
    return out


async def _timeline(
    http: httpx.AsyncClient,
    port: int,
    pid: int,
    samples: list[dict[str, float]],
    every_s: float = 0.5,
) -> None:
    """Sample the indexer's /metrics and process figures (`pid`) and Elasticsearch's node
    stats until cancelled: what the indexer and Elasticsearch did second by second while a
    rate was measured."""
    t0 = time.monotonic()
    while True:
        try:
            sample = {"t": round(time.monotonic() - t0, 2)}
            sample.update(await _scrape(http, port))
            sample.update(_process(pid, "indexer"))
            sample.update(await _es_stats(http))
            samples.append(sample)
        except httpx.HTTPError:
            pass
        await asyncio.sleep(every_s)


async def _rates(
    stack: run.Stack,
    dataset: Dataset,
    http: httpx.AsyncClient,
    opts: run.Options,
    rates: list[tuple[int, float]],
) -> dict[str, Any]:
    """`run.freshness` at each rate, with the indexer's figures and a timeline."""
    port: int = stack.indexer.metrics_port  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for rate, seconds in rates:
        before, t0 = await _scrape(http, port), time.monotonic()
        samples: list[dict[str, float]] = []
        sampler = asyncio.create_task(_timeline(http, port, stack.indexer.proc.pid, samples))
        try:
            fresh = await run.freshness(stack, dataset, http, opts, rate, seconds)
        finally:
            sampler.cancel()
        after, wall = await _scrape(http, port), time.monotonic() - t0
        d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in _METRICS}
        steps = d["indexer_batch_seconds_count"] or 1.0
        fresh["indexer"] = {
            "cpu_s": round(d["process_cpu_seconds_total"], 2),
            "wall_s": round(wall, 1),
            "steps": int(d["indexer_batch_seconds_count"]),
            "records_per_step": round(d["indexer_batch_events_sum"] / steps, 1),
            "seconds_per_step": round(d["indexer_batch_seconds_sum"] / steps, 3),
            "refreshes": int(d["indexer_refreshes_total"]),
            "deferred": int(d["indexer_deferred_documents_total"]),
            "retries": int(d["indexer_batch_retries_total"]),
        }
        fresh["timeline"] = samples
        out[str(rate)] = fresh
    return out


@asynccontextmanager
async def _loaded(
    n: int, env_extra: dict[str, str], opts: run.Options, ceiling: bool, out: dict[str, Any]
) -> AsyncIterator[tuple[run.Stack, Dataset, httpx.AsyncClient, dict[str, str], Path]]:
    """A fresh stack whose indexer runs with `env_extra`, after the initial load of `n`
    artifacts (and the raw `_bulk` ceiling); its figures go to `out`."""
    dataset = generate_dataset(opts.seed, DatasetScale.for_artifacts(n))
    records = dataset_records(dataset, opts.seed)
    prefix = f"fresh-{uuid.uuid4().hex[:8]}"
    log_dir = REPO_ROOT / ".local" / "bench" / prefix  # git-ignored
    kafka = kafka_settings(prefix + ".")
    names = IndexNames(prefix + "-")
    topics = await create_topics(kafka)
    env = stack_env(kafka, names)
    api_port = free_port()
    api = Child("api", ["-m", "artifact_search.cli", "api", "--port", str(api_port)], env, log_dir)
    stack = run.Stack(
        n=n,
        prefix=prefix,
        kafka=kafka,
        names=names,
        topics=topics,
        api=api,
        indexer=indexer_child({**env, **env_extra}, log_dir, 0),
        prefect=api,  # not used by the freshness runs
        api_url=f"http://127.0.0.1:{api_port}/api",
        prefect_url="",
    )
    try:
        await wait_http_ok(api, stack.api_url + "/health", 60)
        async with httpx.AsyncClient(timeout=120) as http:
            load = await run.initial_load(stack, dataset, records, http, opts)
            del records
            out["load_events_per_s"] = load.get("events_per_s")
            out["load_s"] = load["seconds"]
            if ceiling:
                bulk = await bulk_ceiling(names, http, load["seconds"], load["events"])
                out["bulk_s"] = bulk["seconds"]
                out["indexer_vs_bulk"] = bulk["indexer_vs_bulk"]
            yield stack, dataset, http, env, log_dir
    finally:
        await tear_down([api, stack.indexer], topics, names.prefix)


async def one(
    n: int,
    rates: list[tuple[int, float]],
    env_extra: dict[str, str],
    opts: run.Options,
    ceiling: bool = False,
) -> dict[str, Any]:
    """A fresh stack with `env_extra`, the initial load of `n` artifacts, then each rate."""
    out: dict[str, Any] = {"env": env_extra}
    async with _loaded(n, env_extra, opts, ceiling, out) as (stack, dataset, http, _, _):
        out["rates"] = await _rates(stack, dataset, http, opts, rates)
    return out


async def same_load(
    n: int,
    rates: list[tuple[int, float]],
    variants: list[tuple[str, dict[str, str]]],
    rounds: int,
    opts: run.Options,
    ceiling: bool = False,
) -> list[dict[str, Any]]:
    """One stack and one initial load; then, round after round, each variant in turn: the
    indexer stopped and started again on its state with the variant's environment, and
    each rate measured. Variants share the load, the index and the machine's state."""
    load: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    async with _loaded(n, {}, opts, ceiling, load) as (stack, dataset, http, env, log_dir):
        for round_ in range(1, rounds + 1):
            for name, env_extra in variants:
                stack.indexer.stop()
                stack.indexer = indexer_child({**env, **env_extra}, log_dir, 0)
                port = stack.indexer.metrics_port  # type: ignore[attr-defined]
                await wait_http_ok(stack.indexer, f"http://127.0.0.1:{port}/metrics", 120)
                load_avg = f"{os.getloadavg()[0]:.2f}"
                run._log(f"round {round_}, variant {name} {env_extra} (load average {load_avg})")
                measured = await _rates(stack, dataset, http, opts, rates)
                results.append(
                    {
                        "round": round_,
                        "variant": name,
                        "load_avg": load_avg,
                        "env": env_extra,
                        **load,
                        "rates": measured,
                    }
                )
    return results


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| round | variant | load avg | rate/s | p50 s | p95 s | p99 s | visible | saturated "
        "| indexer CPU s | records/step | refreshes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for rate, f in r["rates"].items():
            ix = f["indexer"]
            lines.append(
                f"| {r['round']} | {r['variant']} | {r['load_avg']} | {rate} | {f['p50_s']} "
                f"| {f['p95_s']} | {f['p99_s']} | {f['visible']}/{f['sent']} "
                f"| {f['saturated_after_s'] or '-'} | {ix['cpu_s']} | {ix['records_per_step']} "
                f"| {ix['refreshes']} |"
            )
    return "\n".join(lines)


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return name, env


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    opts = run.parse_options(["--quick"])
    rates = [(int(r), float(s)) for r, s in (p.split(":") for p in args.rates.split(","))]
    variants = [_variant(v) for v in args.variant]
    if args.same_load:
        return await same_load(args.artifacts, rates, variants, args.rounds, opts, args.ceiling)
    results: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        for name, env in variants:
            load_avg = f"{os.getloadavg()[0]:.2f}"
            run._log(f"round {round_}, variant {name} {env} (load average {load_avg})")
            result = await one(args.artifacts, rates, env, opts, args.ceiling)
            results.append({"round": round_, "variant": name, "load_avg": load_avg, **result})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=int, default=20_000)
    parser.add_argument("--rates", default="200:10,1000:20", help="events/s:seconds,...")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="name:ENV=value,... (the indexer's environment; repeat for each variant)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="after each load, the raw _bulk of its final documents (run.bulk_ceiling)",
    )
    parser.add_argument(
        "--same-load",
        action="store_true",
        help="one load for every variant: the indexer restarted on its state with each "
        "variant's environment, variants interleaved round after round",
    )
    parser.add_argument("--out", type=Path, help="raw results (JSON)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results = asyncio.run(amain(args))
    if args.out is not None:
        args.out.write_text(json.dumps({"started": started, "runs": results}, indent=1) + "\n")
    print(_table(results))
    for r in results:
        print(
            f"round {r['round']} {r['variant']}: load {r.get('load_s')} s "
            f"({r.get('load_events_per_s')} events/s), raw _bulk {r.get('bulk_s', '-')} s, "
            f"indexer/bulk {r.get('indexer_vs_bulk', '-')}"
        )


if __name__ == "__main__":
    main()
