"""Benchmarks: indexing throughput, query latency and throughput, freshness, propagation.

``python -m tests.benchmarks.run [--quick] [--scales 100000,1000000]``
(``make bench-quick`` / ``make bench``). For each scale a seeded dataset from
``datagen.dataset`` is published through Kafka to unique topics and indexed by
the real indexer process into uniquely prefixed indices; the query API runs as
its own uvicorn process (1 worker); Prefect 3.9.1 serves the same dataset from
PostgreSQL over HTTP (1 worker, ``tests/benchmarks/prefect_server.py``). Then:

1. initial load: end-to-end events/s (first publish -> every event committed and
   the API's counts equal the dataset's) vs a raw ``_bulk`` of the same final
   documents into scratch indices with the same mappings (bulk + refresh timed);
2. query latency over ``query_mix.json``: (a) this service over HTTP, (b) the same
   translated request sent straight to Elasticsearch (the ceiling), (c) Prefect,
   interleaved per iteration; then concurrent throughput for (a) and (c);
3. freshness at a steady event rate, and fan-out propagation of one flow run's
   state change to 1,000 (and 10,000) artifacts;
4. peak RSS of the processes, restart after SIGKILL, then the side loads (the noisy
   stream, two replicas: child processes on topics of their own), last, because their
   runner's memory empties the page cache the steps above would pay for;
5. once per run (not per scale): alert latency, artifact event produced -> alert on the
   alert topic, at a steady rate (``tests/benchmarks/alert_latency.py``, its own stack);
6. once per run: live sync from Prefect (``sync-prefect``): its initial snapshot against
   ``backfill-prefect``, Prefect commit -> searchable at a steady rate of flow runs with
   artifacts, and the bridge's and PostgreSQL's costs (``tests/benchmarks/sync_bench.py``).

Results go to ``docs/benchmarks``: the raw JSON (``results-<mode>.json``), a generated
report (``report-<mode>.md``), sizing model (``sizing-<mode>.md``) and PNG plots.
RESULTS.md and SIZING.md are the record kept by hand from those and other runs: no run
overwrites them.
Every loop is bounded in count and time; traffic goes to 127.0.0.1 only.
Topics, indices and the child processes are removed at the end; the Prefect
database is kept for reuse (``--drop-prefect-db`` drops it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from datagen.dataset import Dataset, DatasetScale, format_timestamp, generate_dataset
from datagen.events import dataset_records
from query.repository import Repository
from query.search import build_search_body
from query.sort import sort_clauses
from query.translate import translate_artifact_query, translate_collection_query
from services.config import KafkaSettings, QuerySettings
from services.contract import encode_event
from services.es.indices import IndexNames
from services.prefect.filters import ArtifactFilter
from services.prefect.requests import (
    ArtifactCollectionCountRequest,
    ArtifactCollectionReadRequest,
    ArtifactCountRequest,
    ArtifactReadRequest,
    parse_count_request,
    parse_read_request,
)
from tests.benchmarks.ceiling import bulk_ceiling
from tests.benchmarks.kafka_io import (
    KAFKA,
    create_topics,
    end_offsets,
    kafka_settings,
    lag,
    make_producer,
    publish,
)
from tests.benchmarks.procs import REPO_ROOT, Child, free_port, wait_http_ok
from tests.benchmarks.side import (
    entity_and_member_topics,
    indexer_child,
    release_memory,
    restart_after_kill,
    run_side_load,
    stack_env,
    state_size,
    tear_down,
    wait_consuming,
    writes_per_document,
)

HERE = Path(__file__).resolve().parent
MIX_PATH = HERE / "query_mix.json"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks"

ES_URL = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200").rstrip("/")
PG_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:55432/postgres")
LOCAL_PREFIXES = ("127.", "localhost", "[::1]")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _check_local(address: str) -> None:
    host = address.split("://", 1)[-1]
    if not host.startswith(LOCAL_PREFIXES):
        raise SystemExit(f"benchmarks only load servers on 127.0.0.1: refusing {address}")


# ----------------------------------------------------------------------------- options


@dataclass
class Options:
    quick: bool
    scales: list[int]
    seed: int = 7
    warmup: int = 5
    measured: int = 30
    query_budget_s: float = 5.0
    throughput_s: float = 8.0
    clients: tuple[int, ...] = (8, 32)
    fresh: tuple[tuple[int, float], ...] = ((200, 10.0), (1000, 20.0))
    """(events/s, seconds) of each freshness run: a light one, then the target rate."""
    idle_timeout_s: float = 120.0
    propagation: tuple[int, ...] = (1000,)
    alerts: tuple[int, float] = (200, 10.0)
    """(events/s, seconds) of the alert-latency run (tests/benchmarks/alert_latency.py)."""
    sync: tuple[int, float, float] = (20_000, 10.0, 30.0)
    """(artifacts in Prefect, artifacts/s, seconds) of the live-sync run (sync_bench.py)."""
    load_timeout_s: float = 600.0
    prefect_timeout_s: float = 600.0
    profile: str | None = None
    out: Path = DEFAULT_OUT
    drop_prefect_db: bool = False
    queries_only: bool = False
    """The query service only: the initial load, the query mix's latency, the paging runs
    (`paging`) and the search extension (`search_extension`); no ceiling, throughput,
    indexer runs, alerts or sync; the results go to results-queries.json (no report)."""
    search_only: bool = False
    """The search extension only (`search_extension`), after the initial load: no Prefect,
    no query mix; results-search.json."""
    indexer_only: bool = False
    """Issue 11's figures only: no Prefect, no query latency or throughput, no alerts or
    sync; the results go to results-indexer.json (no report)."""
    skip: frozenset[str] = frozenset()
    """Side loads left out (`SIDE_LOADS`): absent from the results, "not measured"."""


SIDE_LOADS: dict[str, tuple[bool, int, bool]] = {
    "noisy": (True, 1, False),
    "backlog": (False, 1, True),
    "noisy_backlog": (True, 1, True),
    "replicas": (False, 2, False),
}
"""The side loads of an indexer run: label -> (noisy stream, replicas, from a backlog)."""


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one scale of 20k, < 5 minutes")
    parser.add_argument("--scales", help="comma-separated artifact counts (full: 100000,1000000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile",
        choices=("api", "indexer"),
        help="run that process under pyinstrument (text report next to the results)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--drop-prefect-db", action="store_true")
    parser.add_argument(
        "--indexer-only",
        action="store_true",
        help="the indexer's figures only (load, ceiling, noisy, replicas, freshness incl. "
        "5,000 events/s, propagation, RSS, restart): results-indexer.json",
    )
    parser.add_argument(
        "--queries-only",
        action="store_true",
        help="the query service only (load, query mix latency, sequential and cold deep "
        "pages, the search extension): results-queries.json",
    )
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="the search extension only (load, then `search_extension`, with the relevance "
        "walks also without windows), no Prefect: results-search.json",
    )
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated side loads to leave out ({', '.join(SIDE_LOADS)}): each "
        "is a whole load of its own, tens of minutes at 1M",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="only write the report, sizing model and plots of a results JSON "
        "(report-<mode>.md, sizing-<mode>.md)",
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        from tests.benchmarks import report

        results = json.loads(args.report.read_text())
        report.write_all(results, args.out)
        print(report.summary(results))
        raise SystemExit(0)
    if args.scales:
        scales = [int(s.replace("_", "")) for s in args.scales.split(",") if s.strip()]
    else:
        scales = [20_000] if args.quick else [100_000, 1_000_000]
    opts = Options(quick=args.quick, scales=scales, seed=args.seed, profile=args.profile)
    opts.out = args.out
    opts.drop_prefect_db = args.drop_prefect_db
    opts.indexer_only = args.indexer_only
    opts.queries_only = args.queries_only
    opts.search_only = args.search_only
    opts.skip = frozenset(s.strip() for s in args.skip.split(",") if s.strip())
    if not opts.skip <= set(SIDE_LOADS):
        parser.error(f"--skip takes {', '.join(SIDE_LOADS)}")
    if opts.indexer_only + opts.queries_only + opts.search_only > 1:
        parser.error("--indexer-only, --queries-only and --search-only exclude each other")
    if not args.quick:
        opts.warmup, opts.measured, opts.query_budget_s = 5, 30, 60.0
        opts.throughput_s, opts.fresh = 30.0, ((200, 30.0), (1000, 60.0))
        opts.idle_timeout_s = 900.0
        opts.propagation = (1000, 10_000)
        opts.alerts = (1000, 60.0)
        opts.sync = (1_000_000, 20.0, 60.0)
        opts.load_timeout_s, opts.prefect_timeout_s = 3600.0, 3600.0
    if opts.indexer_only:  # and the sustained rate of issue 11
        opts.fresh = (*opts.fresh, (5000, 30.0 if not opts.quick else 10.0))
    return opts


# ----------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": round(pct(ms, 0.5), 3),
        "p95": round(pct(ms, 0.95), 3),
        "p99": round(pct(ms, 0.99), 3),
        "mean": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


# ----------------------------------------------------------------------------- raw ES


@dataclass
class Ndjson:
    """A body sent as newline-delimited JSON (`_msearch`)."""

    lines: list[Any]


class Http:
    """The measuring client: aiohttp (what elasticsearch-py uses), bodies as raw bytes.

    One client library for (a), (b) and (c), so client-side costs are alike; aiohttp
    costs the shared CPUs less per request than httpx, which matters under load.
    """

    def __init__(self, connections: int = 64) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=300),
        )

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        headers = None
        data: bytes | None = None
        if isinstance(body, Ndjson):
            data = b"".join(orjson.dumps(line) + b"\n" for line in body.lines)
            headers = {"content-type": "application/x-ndjson"}
        elif body is not None:
            data = orjson.dumps(body)
            headers = {"content-type": "application/json"}
        async with self.session.request(
            method, url, data=data, params=params, headers=headers
        ) as resp:
            return resp.status, await resp.read()

    async def post_json(self, url: str, body: Any) -> Any:
        status, raw = await self.request("POST", url, body)
        if status != 200:
            raise RuntimeError(f"{url}: {status} {raw[:300]!r}")
        return orjson.loads(raw)

    async def close(self) -> None:
        await self.session.close()


class RawEs:
    """The calls `query.repository.Repository` makes, over plain aiohttp + orjson.

    Handing this to `Repository` sends exactly the service's request bodies and
    `filter_path` to Elasticsearch, without FastAPI, validation or the client library.
    """

    def __init__(self, http: Http) -> None:
        self.http = http

    async def _call(self, method: str, path: str, body: Any, params: dict[str, Any]) -> Any:
        status, raw = await self.http.request(method, ES_URL + path, body, _params(params))
        if status >= 400:
            raise RuntimeError(f"Elasticsearch {path}: {status} {raw[:300]!r}")
        return orjson.loads(raw)

    async def search(self, *, body: Any, index: str | None = None, **params: Any) -> Any:
        return await self._call("POST", f"/{index}/_search" if index else "/_search", body, params)

    async def count(self, *, index: str, body: Any, **params: Any) -> Any:
        return await self._call("POST", f"/{index}/_count", body, params)

    async def msearch(self, *, searches: list[Any], **params: Any) -> Any:
        return await self._call("POST", "/_msearch", Ndjson(searches), params)

    async def open_point_in_time(self, *, index: str, **params: Any) -> Any:
        return await self._call("POST", f"/{index}/_pit", None, params)

    async def close_point_in_time(self, *, id: str, **params: Any) -> Any:  # the client's name
        return await self._call("DELETE", "/_pit", {"id": id}, params)


def _params(params: dict[str, Any]) -> dict[str, str]:
    """Keyword arguments of the client's API -> URL query parameters."""
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        out[key] = str(value)
    return out


# ----------------------------------------------------------------------------- query mix


@dataclass
class MixQuery:
    name: str
    endpoint: str
    body: dict[str, Any]
    join: bool
    min_matches: int = 0

    @property
    def collection(self) -> bool:
        return "/latest/" in self.endpoint

    @property
    def is_count(self) -> bool:
        return self.endpoint.endswith("/count")

    def direct(self, repo: Repository) -> Callable[[], Awaitable[Any]]:
        """(b): translate once, as query/app.py does, and return the repository call."""
        coll = self.collection
        translate = translate_collection_query if coll else translate_artifact_query
        if self.is_count:
            creq = parse_count_request(
                ArtifactCollectionCountRequest if coll else ArtifactCountRequest, self.body
            )
            q = translate(
                creq.artifacts, creq.flow_runs, creq.task_runs, creq.flows, creq.deployments
            )
            return lambda: repo.count(q, coll)
        rreq = parse_read_request(
            ArtifactCollectionReadRequest if coll else ArtifactReadRequest,
            self.body,
            default_limit=200,
        )
        q = translate(rreq.artifacts, rreq.flow_runs, rreq.task_runs, rreq.flows, rreq.deployments)
        sort = sort_clauses(rreq.sort, collection=coll)
        return lambda: repo.search(q, sort, rreq.offset, rreq.limit, coll)


def load_mix() -> list[MixQuery]:
    raw = json.loads(MIX_PATH.read_text())
    return [MixQuery(**q) for q in raw["queries"]]


# ----------------------------------------------------------------------------- the run


@dataclass
class Stack:
    """What one scale runs against."""

    n: int
    prefix: str
    kafka: KafkaSettings
    names: IndexNames
    topics: list[str]
    api: Child
    indexer: Child
    prefect: Child
    api_url: str
    prefect_url: str
    children: list[Child] = field(default_factory=list)


def artifact_event(art: dict[str, Any], version: int) -> tuple[str, bytes, bytes]:
    return (
        "artifact",
        art["id"].encode(),
        encode_event("artifact", art["id"], "upsert", version, art),
    )


def now_us() -> int:
    return time.time_ns() // 1000


async def run_scale(opts: Options, n: int, machine: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"artifacts": n}
    prefix = f"bench-{n}-{uuid.uuid4().hex[:8]}"
    log_dir = REPO_ROOT / ".local" / "bench" / prefix  # git-ignored
    _log(f"scale {n:,}: generating the dataset (seed {opts.seed})")
    started = time.perf_counter()
    dataset = generate_dataset(opts.seed, DatasetScale.for_artifacts(n))
    records = dataset_records(dataset, opts.seed)
    collections = len(dataset.collections())
    result["dataset"] = {
        "flows": len(dataset.flows),
        "deployments": len(dataset.deployments),
        "flow_runs": len(dataset.flow_runs),
        "task_runs": len(dataset.task_runs),
        "artifacts": len(dataset.artifacts),
        "collections": collections,
        "deleted": sum(len(v) for v in dataset.deleted.values()),
        "events": len(records),
        "event_bytes": sum(len(v) for _, _, v in records if v is not None),
        "generate_s": round(time.perf_counter() - started, 2),
    }
    _log(f"  {len(records):,} events, {collections:,} collections")

    # (c) Prefect first, so that its load does not compete with the indexer's
    prefect_port = free_port()
    prefect = (
        None
        if opts.indexer_only or opts.search_only
        else Child(
            "prefect",
            [
                "-m",
                "tests.benchmarks.prefect_server",
                "--seed",
                str(opts.seed),
                "--artifacts",
                str(n),
                "--port",
                str(prefect_port),
                "--dsn",
                PG_DSN,
            ],
            {},
            log_dir,
        )
    )
    children = [] if prefect is None else [prefect]
    kafka = kafka_settings(prefix + ".")
    names = IndexNames(prefix + "-")
    topics: list[str] = []
    try:
        if prefect is not None:
            await _start_prefect(prefect, prefect_port, opts, result)

        topics = await create_topics(kafka)
        env = stack_env(kafka, names)
        api_port = free_port()
        api = Child(
            "api",
            ["-m", "artifact_search.cli", "api", "--port", str(api_port)],
            env,
            log_dir,
            profile_to=opts.out / f"profile-api-{n}.txt" if opts.profile == "api" else None,
        )
        indexer = indexer_child(
            env,
            log_dir,
            0,
            profile_to=opts.out / f"profile-indexer-{n}.txt" if opts.profile == "indexer" else None,
        )
        children += [api, indexer]
        stack = Stack(
            n=n,
            prefix=prefix,
            kafka=kafka,
            names=names,
            topics=topics,
            api=api,
            indexer=indexer,
            prefect=api if prefect is None else prefect,  # only the query runs use it
            api_url=f"http://127.0.0.1:{api_port}/api",
            prefect_url="" if prefect is None else f"http://127.0.0.1:{prefect_port}/api",
        )
        await wait_http_ok(api, stack.api_url + "/health", 60)
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
            result["load"] = await initial_load(stack, dataset, records, http, opts)
            if opts.queries_only or opts.search_only:
                del records
                release_memory()
                result["settled"] = await settle(http, stack.names)
                plain_url = await _start_plain(env, log_dir, children)
                if opts.queries_only:
                    result["latency"] = await latency(stack, load_mix(), http, opts, plain_url)
                    result["paging"] = await paging(stack, opts, plain_url)
                # cursor pages asked of Elasticsearch when asked, none fetched ahead
                behind_url = await _start_api_variant(
                    "api-not-ahead", {**env, "QUERY_PAGES_AHEAD": "0"}, log_dir, children
                )
                result["search"] = await search_extension(stack, opts, plain_url, behind_url)
                return result
            events = len(records)
            del records  # the side loads regenerate theirs in child processes
            release_memory()  # before the ceiling, which must not compete for page cache
            result["ceiling"] = await bulk_ceiling(
                stack.names, http, result["load"]["seconds"], events
            )
            docs = result["ceiling"]["documents"]
            result["load"]["writes_per_document"] = await writes_per_document(stack.indexer, docs)
            result["state"] = state_size(log_dir / "state-0", dataset)
            if not opts.indexer_only:
                mix = load_mix()
                result["settled"] = await settle(http, stack.names)
                plain_url = await _start_plain(env, log_dir, children)
                result["latency"] = await latency(stack, mix, http, opts, plain_url)
                result["throughput"] = await throughput(stack, mix, opts, result["latency"])
            result["freshness"] = {}
            for rate, seconds in opts.fresh:
                result["freshness"][str(rate)] = await freshness(
                    stack, dataset, http, opts, rate, seconds
                )
            result["propagation"] = await propagation(stack, dataset, http, opts)
            result["rss_mib"] = {c.name.split("-")[0]: c.peak_rss_mib() for c in children}
            _log(f"  peak RSS (MiB): {result['rss_mib']}")
            factory = ArtifactFactory(dataset, opts.seed + 3)

            def keyless(count: int) -> list[tuple[str, bytes, Any]]:
                return [
                    artifact_event(factory.make(None, now_us()), now_us()) for _ in range(count)
                ]

            result["restart"] = await restart_after_kill(
                stack, dataset, http, opts, log_dir, keyless
            )
            children.append(stack.indexer)
            # last: their runner's memory (13 GB for the noisy stream at 1M) empties the page
            # cache, which the measurements above would then pay for in disk reads.
            # `backlog`: the same streams published first, then consumed by an indexer
            # started on them (an initial load on topics that hold the history, a rebuilt
            # replica): no producer competes with it, and it starts with the whole backlog
            for label, (noisy, replicas, backlog) in SIDE_LOADS.items():
                if label in opts.skip:
                    continue
                side = await run_side_load(
                    n, opts.seed, label, noisy, replicas, opts.load_timeout_s, backlog
                )
                side["indexer_vs_bulk"] = round(result["ceiling"]["seconds"] / side["seconds"], 3)
                if label == "replicas":
                    result["load_replicas"] = {
                        "1": {k: result["load"][k] for k in ("seconds", "events_per_s")},
                        "2": side,
                    }
                else:
                    result[f"load_{label}"] = side
    finally:
        await tear_down(children, topics, names.prefix)
        if opts.drop_prefect_db and prefect is not None:
            Child(
                "prefect-drop",
                [
                    *("-m", "tests.benchmarks.prefect_server", "--seed", str(opts.seed)),
                    *("--artifacts", str(n), "--dsn", PG_DSN, "--drop"),
                ],
                {},
                log_dir,
            ).proc.wait(120)
    return result


async def _start_plain(env: dict[str, str], log_dir: Path, children: list[Child]) -> str:
    """The same API without what it remembers between requests, to run side by side: page
    boundaries (QUERY_PAGE_BOUNDARIES=0), relevance windows (QUERY_RELEVANCE_WINDOW_PAGES=1),
    Elasticsearch's request cache for searches with hits (QUERY_REQUEST_CACHE=false) and
    cursor pages fetched ahead (QUERY_PAGES_AHEAD=0).
    Its URL."""
    return await _start_api_variant(
        "api-plain",
        {
            **env,
            "QUERY_PAGE_BOUNDARIES": "0",
            "QUERY_RELEVANCE_WINDOW_PAGES": "1",
            "QUERY_REQUEST_CACHE": "false",
            "QUERY_PAGES_AHEAD": "0",
        },
        log_dir,
        children,
    )


async def _start_api_variant(
    name: str, env: dict[str, str], log_dir: Path, children: list[Child]
) -> str:
    """One more API process on the same stack with `env`; its URL."""
    port = free_port()
    child = Child(name, ["-m", "artifact_search.cli", "api", "--port", str(port)], env, log_dir)
    children.append(child)
    url = f"http://127.0.0.1:{port}/api"
    await wait_http_ok(child, url + "/health", 60)
    return url


async def _start_prefect(prefect: Child, port: int, opts: Options, result: dict[str, Any]) -> None:
    _log("  Prefect 3.9.1: preparing PostgreSQL and starting the server")
    t0 = time.perf_counter()
    await wait_http_ok(prefect, f"http://127.0.0.1:{port}/api/health", opts.prefect_timeout_s)
    result["prefect_setup"] = {
        "seconds": round(time.perf_counter() - t0, 1),
        **_prefect_info(prefect),
    }
    _log(f"  Prefect ready in {time.perf_counter() - t0:.1f}s {result['prefect_setup']}")


def _prefect_info(child: Child) -> dict[str, Any]:
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"prepared"' in line:
            info = json.loads(line)
            info.pop("event", None)
            return dict(info)
    return {}


# ----------------------------------------------------------------------------- 1. load


async def api_count(http: httpx.AsyncClient, url: str, path: str, body: Any) -> int:
    resp = await http.post(url + path, json=body)
    resp.raise_for_status()
    return int(resp.json())


async def initial_load(
    stack: Stack,
    dataset: Dataset,
    records: list[tuple[str, bytes, Any]],
    http: httpx.AsyncClient,
    opts: Options,
) -> dict[str, Any]:
    """Publish everything once the indexer consumes; time until all of it is queryable."""
    producer = await make_producer()
    try:
        await wait_consuming(producer, stack.kafka, stack.names, [stack.indexer], http)
        _log(f"  publishing {len(records):,} events; the indexer consumes concurrently")
        rss_before = stack.indexer.peak_rss_mib()
        t0 = time.perf_counter()
        await publish(producer, stack.kafka, records)
        published = time.perf_counter() - t0
    finally:
        await producer.stop()
    _log(f"  published in {published:.1f}s ({len(records) / published:,.0f} events/s)")
    ends = await end_offsets(entity_and_member_topics(stack.topics))
    want_artifacts = len(dataset.artifacts)
    want_collections = len(dataset.collections())
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    lag_zero_at: float | None = None
    samples: list[tuple[float, int]] = []
    try:
        deadline = t0 + opts.load_timeout_s
        last_report = 0.0
        while True:
            stack.indexer.check()
            now = time.perf_counter()
            behind = await lag(stack.kafka, admin, ends)
            samples.append((round(now - t0, 2), behind))
            if behind == 0 and lag_zero_at is None:
                lag_zero_at = now
            if behind == 0:
                arts = await api_count(http, stack.api_url, "/artifacts/count", {})
                colls = await api_count(http, stack.api_url, "/artifacts/latest/count", {})
                if arts == want_artifacts and colls == want_collections:
                    done = time.perf_counter()
                    break
            if now > deadline:
                raise TimeoutError(f"not converged after {opts.load_timeout_s:.0f}s (lag {behind})")
            if now - last_report > 15:
                _log(f"    {now - t0:.0f}s: {behind:,} events behind")
                last_report = now
            await asyncio.sleep(0.25)
    finally:
        await admin.close()
    seconds = done - t0
    out = {
        "events": len(records),
        "publish_s": round(published, 2),
        "publish_events_per_s": round(len(records) / published),
        "lag_zero_s": round((lag_zero_at or done) - t0, 2),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(records) / seconds),
        "artifacts_per_s": round(want_artifacts / seconds),
        "indexer_rss_before_mib": rss_before,
        "lag_samples": samples[:: max(1, len(samples) // 60)],
    }
    _log(f"  indexed end-to-end in {seconds:.1f}s: {out['events_per_s']:,} events/s")
    return out


# ----------------------------------------------------------------------------- 2. queries


async def settle(
    http: httpx.AsyncClient, names: IndexNames, limit_s: float = 900.0
) -> dict[str, Any]:
    """Wait until Elasticsearch runs no merge on the stack's indices (at most `limit_s`).

    Right after a load, Elasticsearch still merges the segments the load wrote (at 1M for
    minutes, on one of the two cores): query latencies measured then measure the merges
    too. A served index spends its life between such bursts, so the query runs start once
    they are over; the segments and deleted documents left are recorded with the wait.
    """
    pattern = f"{names.prefix}*"
    started = time.perf_counter()
    quiet = 0
    merging = 0
    while time.perf_counter() - started < limit_s:
        resp = await http.get(f"{ES_URL}/{pattern}/_stats/merge", params={"level": "indices"})
        merging = int(resp.json()["_all"]["primaries"]["merges"]["current"])
        quiet = quiet + 1 if merging == 0 else 0
        if quiet >= 3:  # three polls a second apart: not the gap between two merges
            break
        await asyncio.sleep(1.0)
    waited = round(time.perf_counter() - started, 1)
    stats = (
        await http.get(f"{ES_URL}/{pattern}/_stats/docs,segments", params={"level": "indices"})
    ).json()["indices"]
    out: dict[str, Any] = {"waited_s": waited, "merging_at_end": merging, "indices": {}}
    for index, body in sorted(stats.items()):
        if body["primaries"]["docs"]["count"] == 0:
            continue
        out["indices"][index.removeprefix(names.prefix)] = {
            "docs": body["primaries"]["docs"]["count"],
            "deleted_docs": body["primaries"]["docs"]["deleted"],
            "segments": body["primaries"]["segments"]["count"],
        }
    _log(f"  merges settled after {waited:.0f}s: {out['indices']}")
    return out


def _shape(answer: Any) -> Any:
    return answer if isinstance(answer, int) else len(answer)


async def latency(
    stack: Stack,
    mix: list[MixQuery],
    http: httpx.AsyncClient,
    opts: Options,
    plain_url: str | None = None,
) -> dict[str, Any]:
    """Sequential latency per query, (a)/(b)/(c) interleaved in rotating order, and (p)
    with `plain_url`: the same API remembering nothing between requests (`_start_plain`),
    so what the service's memory (page boundaries, Elasticsearch's request cache) does to a
    query asked again is shown beside it."""
    meter = Http()
    window = QuerySettings().max_result_window  # what the service is configured with
    repo = Repository(RawEs(meter), stack.names, window)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    try:
        for q in mix:
            if q.min_matches:
                base = {k: v for k, v in q.body.items() if k not in ("sort", "offset", "limit")}
                matches = await api_count(http, stack.api_url, "/artifacts/count", base)
                if matches < q.min_matches:
                    out[q.name] = {"skipped": f"{matches} matches < {q.min_matches}"}
                    continue
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "a": lambda q=q: meter.post_json(stack.api_url + q.endpoint, q.body),
                "b": q.direct(repo),
                "c": lambda q=q: meter.post_json(stack.prefect_url + q.endpoint, q.body),
            }
            if plain_url is not None:
                calls["p"] = lambda q=q: meter.post_json(plain_url + q.endpoint, q.body)
            times: dict[str, list[float]] = {s: [] for s in calls}
            shapes: dict[str, Any] = {}
            order = list(calls)
            started = time.perf_counter()
            for i in range(opts.warmup + opts.measured):
                order = order[1:] + order[:1]
                for system in order:
                    t = time.perf_counter()
                    answer = await calls[system]()
                    dt = time.perf_counter() - t
                    if i >= opts.warmup:
                        times[system].append(dt)
                    shapes[system] = _shape(answer)
                measured = i + 1 - opts.warmup
                if measured >= 5 and time.perf_counter() - started > opts.query_budget_s:
                    break
            entry: dict[str, Any] = {
                "join": q.join,
                "deep": bool(q.min_matches),
                "endpoint": q.endpoint,
                **{s: summary_ms(v) for s, v in times.items()},
                "answers": shapes,
                "answers_agree": len({repr(shape) for shape in shapes.values()}) == 1,
            }
            entry["a_over_b"] = round(entry["a"]["p50"] / entry["b"]["p50"], 2)
            entry["c_over_a"] = round(entry["c"]["p50"] / entry["a"]["p50"], 2)
            if "p" in times:
                entry["c_over_p"] = round(entry["c"]["p50"] / entry["p"]["p50"], 2)
            out[q.name] = entry
            _log(
                f"    {q.name:30s} a p50 {entry['a']['p50']:8.2f}ms  b {entry['b']['p50']:8.2f}ms  "
                f"c {entry['c']['p50']:9.2f}ms  a/b {entry['a_over_b']:5.2f}  "
                f"c/a {entry['c_over_a']:7.1f}"
                + (
                    f"  p {entry['p']['p50']:8.2f}ms c/p {entry['c_over_p']:6.1f}"
                    if "p" in entry
                    else ""
                )
                + ("" if entry["answers_agree"] else f"  answers differ {shapes}")
            )
    finally:
        await meter.close()
    return out


PAGE = 200
PAGING_DEPTH = 10_000


async def paging(stack: Stack, opts: Options, plain_url: str) -> dict[str, Any]:
    """Prefect's UI paging through one order, and deep pages asked cold, service vs Prefect.

    - sequential: offsets 0, 200, ..., 10,000 of ``KEY_ASC`` (51 pages of 200), in turn on
      the service (a), on Prefect (c) and on the same service without page boundaries
      (`plain_url`, QUERY_PAGE_BOUNDARIES=0: every page ranked from the start; "p"),
      several passes in rotating order; per-page times. The service continues each page
      from the previous page's last hit (query/resume.py).
    - cold: one page at offset 10,000 whose request shape neither system has seen (a
      filter that excludes a random type no artifact has: the same hits), as a
      first visit to a deep page would be.
    Every page's sequence of keys must agree between the two systems (reported, not
    assumed; the order of artifacts that share a key is PostgreSQL's choice).
    """
    meter = Http()
    passes = 2 if opts.quick else 5
    systems = ["a", "c", "p"]
    seq: dict[str, list[float]] = {s: [] for s in systems}
    deep: dict[str, list[float]] = {s: [] for s in systems}
    cold: dict[str, list[float]] = {s: [] for s in systems}
    disagreements = 0
    urls = {"a": stack.api_url, "c": stack.prefect_url, "p": plain_url}
    try:
        for i in range(passes):
            # a fresh shape per pass: a pass starts cold and continues from its own pages
            base = {"sort": "KEY_ASC", "artifacts": {"type": {"not_any_": [str(uuid.uuid4())]}}}
            for offset in range(0, PAGING_DEPTH + 1, PAGE):
                body = {**base, "offset": offset, "limit": PAGE}
                ids = {}
                for system in systems[i % 3 :] + systems[: i % 3]:
                    t = time.perf_counter()
                    rows = await meter.post_json(urls[system] + "/artifacts/filter", body)
                    dt = time.perf_counter() - t
                    seq[system].append(dt)
                    if offset >= PAGING_DEPTH - 1_000:
                        deep[system].append(dt)
                    ids[system] = [r["key"] for r in rows]
                disagreements += not ids["a"] == ids["c"] == ids["p"]
        for i in range(opts.measured):
            body = {
                "sort": "KEY_ASC",
                "artifacts": {"type": {"not_any_": [str(uuid.uuid4())]}},
                "offset": PAGING_DEPTH,
                "limit": 50,
            }
            ids = {}
            for system in systems[i % 3 :] + systems[: i % 3]:
                t = time.perf_counter()
                rows = await meter.post_json(urls[system] + "/artifacts/filter", body)
                cold[system].append(time.perf_counter() - t)
                ids[system] = [r["key"] for r in rows]
            disagreements += not ids["a"] == ids["c"] == ids["p"]
    finally:
        await meter.close()
    out: dict[str, Any] = {
        "passes": passes,
        "pages_per_pass": PAGING_DEPTH // PAGE + 1,
        "sequential_all_pages": {s: summary_ms(v) for s, v in seq.items()},
        "sequential_pages_9000_to_10000": {s: summary_ms(v) for s, v in deep.items()},
        "sequential_pass_s": {s: round(sum(v) / passes, 3) for s, v in seq.items()},
        "cold_offset_10000": {s: summary_ms(v) for s, v in cold.items()},
        "disagreements": disagreements,
    }
    for name in ("sequential_all_pages", "sequential_pages_9000_to_10000", "cold_offset_10000"):
        out[name]["c_over_a"] = round(out[name]["c"]["p50"] / out[name]["a"]["p50"], 2)
        out[name]["p_over_a"] = round(out[name]["p"]["p50"] / out[name]["a"]["p50"], 2)
    _log(
        f"    paging: a pass of {out['pages_per_pass']} pages {out['sequential_pass_s']['a']}s "
        f"vs Prefect {out['sequential_pass_s']['c']}s, without boundaries "
        f"{out['sequential_pass_s']['p']}s; deep pages c/a "
        f"{out['sequential_pages_9000_to_10000']['c_over_a']}; cold offset 10,000 c/a "
        f"{out['cold_offset_10000']['c_over_a']}; {disagreements} disagreements"
    )
    return out


SEARCHES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("words", {"q": "revenue emea"}),
    ("phrase", {"q": '"week over week"'}),
    ("boolean", {"q": "revenue AND (emea OR apac) -draft"}),
    ("typed_metadata", {"q": "metadata.accuracy >= 0.9"}),
    ("typed_table", {"q": "data.region:emea AND data.revenue > 15000"}),
    (
        "words_and_prefect_filter",
        {
            "q": "report",
            "prefect_filter": {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
        },
    ),
)
"""The search extension's queries (docs/search.md) measured by `search_extension`."""
PACE_S = 0.1
"""Seconds between the pages of the paced cursor walks (`search_extension`)."""
WALK_ROUNDS = 3
"""How many times each cursor walk without pauses runs (`search_extension`)."""
SEARCH_FACETS = ["type", "flow", "deployment", "flow_run_state", "tags", "created"]


async def search_extension(
    stack: Stack, opts: Options, plain_url: str | None = None, behind_url: str | None = None
) -> dict[str, Any]:
    """`POST /ext/v1/artifacts/search`: full text, typed values, facets, cursor pages.

    Each query of `SEARCHES` (20 hits, highlighted, relevance order) alone and with six
    facets (type, flow, deployment, flow-run state, tags, a monthly created histogram),
    interleaved; then cursor walks of 50-hit pages, newest first and by relevance, with and
    without highlighted snippets, as deep as 10,000 hits, with the time of every page, as fast
    as the API answers and, by relevance, `PACE_S` apart as a reader pages. The issue's
    targets: full text p50 <= 25 ms, with facets <= 40 ms, a cursor page <= 15 ms at any
    depth; the walks without pauses `WALK_ROUNDS` times, interleaved. With `plain_url` (an
    API that remembers nothing between pages), the
    relevance walks also run there, each right after its windowed twin (query/windows.py).
    With `behind_url` (an API that fetches no cursor page ahead, `QUERY_PAGES_AHEAD=0`), the
    walks with snippets run there too (`..._not_ahead`), each as fast as the API answers
    and paced. (Until 2026-12-05 that API ranked windows late instead,
    `..._ranked_late`.)
    """
    meter = Http()
    url = stack.api_url.removesuffix("/api") + "/ext/v1/artifacts/search"
    unwindowed = (
        None if plain_url is None else plain_url.removesuffix("/api") + "/ext/v1/artifacts/search"
    )
    behind = (
        None if behind_url is None else behind_url.removesuffix("/api") + "/ext/v1/artifacts/search"
    )
    out: dict[str, Any] = {}
    try:
        for name, body in SEARCHES:
            counted = await meter.post_json(url, {**body, "limit": 0, "track_total": True})
            variants = {
                "plain": {**body, "limit": 20},
                "facets": {**body, "limit": 20, "facets": SEARCH_FACETS, "histogram": "month"},
            }
            # "..._uncached": the same request to the API without Elasticsearch's request
            # cache (`_start_plain`): what a query costs when it was not just asked
            targets = [(v, url, variants[v]) for v in variants]
            if unwindowed is not None:
                targets += [(f"{v}_uncached", unwindowed, variants[v]) for v in variants]
            times: dict[str, list[float]] = {label: [] for label, _, _ in targets}
            hits = 0
            for i in range(opts.warmup + opts.measured):
                shift = i % len(targets)
                for label, target, request in targets[shift:] + targets[:shift]:
                    t = time.perf_counter()
                    answer = await meter.post_json(target, request)
                    if i >= opts.warmup:
                        times[label].append(time.perf_counter() - t)
                    hits = len(answer["hits"])
            out[name] = {
                "matches": counted["total"],
                "hits": hits,
                **{v: summary_ms(t) for v, t in times.items()},
            }
            plain, faceted = out[name]["plain"]["p50"], out[name]["facets"]["p50"]
            _log(
                f"    search {name:26s} {counted['total']:>9,} matches  p50 {plain:7.2f}ms  "
                f"with facets {faceted:7.2f}ms"
                + (
                    f"  uncached {out[name]['plain_uncached']['p50']:7.2f} / "
                    f"{out[name]['facets_uncached']['p50']:7.2f}ms"
                    if "plain_uncached" in out[name]
                    else ""
                )
            )
        newest: list[dict[str, str]] = [{"field": "created", "order": "desc"}]
        # (name, sort, snippets, API, seconds between pages: 0 as fast as it answers; a
        # person paging through results reads a page before asking for the next)
        walks: list[tuple[str, Any, bool, str, float]] = [
            ("created_desc", newest, True, url, 0.0),
            ("relevance", None, True, url, 0.0),
            ("created_desc_no_highlight", newest, False, url, 0.0),
            ("relevance_no_highlight", None, False, url, 0.0),
            ("relevance_paced", None, True, url, PACE_S),
            ("created_desc_paced", newest, True, url, PACE_S),
        ]
        if behind is not None:
            walks.insert(2, ("relevance_not_ahead", None, True, behind, 0.0))
            walks.insert(3, ("created_desc_not_ahead", newest, True, behind, 0.0))
            walks.append(("relevance_paced_not_ahead", None, True, behind, PACE_S))
            walks.append(("created_desc_paced_not_ahead", newest, True, behind, PACE_S))
        if unwindowed is not None:
            walks.insert(2, ("relevance_unwindowed", None, True, unwindowed, 0.0))
            walks.append(("relevance_no_highlight_unwindowed", None, False, unwindowed, 0.0))
            walks.append(("relevance_paced_unwindowed", None, True, unwindowed, PACE_S))

        async def walk_once(body: dict[str, Any], walk_url: str, pace: float) -> list[float]:
            pages: list[float] = []
            cursor = None
            while len(pages) < 200:
                t = time.perf_counter()
                answer = await meter.post_json(
                    walk_url, {**body, "cursor": cursor} if cursor else body
                )
                pages.append(time.perf_counter() - t)
                cursor = answer.get("next_cursor")
                if not cursor:
                    break
                if pace:
                    await asyncio.sleep(pace)
            return pages

        # walks as fast as the API answers run WALK_ROUNDS times, interleaved (each round in
        # another order): a walk's tail is a few pages, so one walk is a noisy sample
        tight = [w for w in walks if not w[4]]
        rounds = [tight[r % len(tight) :] + tight[: r % len(tight)] for r in range(WALK_ROUNDS)]
        walked: dict[str, list[list[float]]] = {w[0]: [] for w in walks}
        for name, sort, highlight, walk_url, pace in [w for r in rounds for w in r] + [
            w for w in walks if w[4]
        ]:
            body: dict[str, Any] = {"q": "revenue", "limit": 50, "fields": ["id", "key", "type"]}
            if sort:
                body["sort"] = sort
            if not highlight:
                body["highlight"] = False
            walked[name].append(await walk_once(body, walk_url, pace))
        for name, runs in walked.items():
            pages = [t for run in runs for t in run]
            out[f"cursor_{name}"] = {
                "walks": len(runs),
                "pages": len(pages),
                "all": summary_ms(pages),
                "pages_100_on": summary_ms([t for run in runs for t in run[100:]]),
                "max_ms": round(max(pages) * 1000, 3),
                "walk_s": [round(sum(run), 3) for run in runs],
            }
            walk = out[f"cursor_{name}"]
            _log(
                f"    cursor {name}: {len(runs)} x {len(runs[0])} pages of 50, "
                f"p50 {walk['all']['p50']:.2f}ms, p95 {walk['all']['p95']:.2f}ms, "
                f"p99 {walk['all']['p99']:.2f}ms, max {walk['max_ms']}ms"
            )
    finally:
        await meter.close()
    return out


async def _drive(base: str, usable: list[MixQuery], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` workers, one connection each, cycling over the mix until the deadline."""
    times: list[float] = []
    errors = 0
    client = Http(connections=clients)
    try:
        deadline = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal errors
            i = index
            while time.perf_counter() < deadline:
                q = usable[i % len(usable)]
                i += 1
                t = time.perf_counter()
                try:
                    status, _ = await client.request("POST", base + q.endpoint, q.body)
                    ok = status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    times.append(time.perf_counter() - t)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
    finally:
        await client.close()
    return {
        "requests": len(times),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(times) / elapsed, 1),
        **{k: v for k, v in summary_ms(times).items() if k != "n"},
    }


async def throughput(
    stack: Stack, mix: list[MixQuery], opts: Options, lat: dict[str, Any]
) -> dict[str, Any]:
    """N concurrent clients cycling over the mix for a bounded time, for (a) and (c)."""
    usable = [q for q in mix if "skipped" not in lat.get(q.name, {})]
    out: dict[str, Any] = {}
    for clients in opts.clients:
        for system, base in (("a", stack.api_url), ("c", stack.prefect_url)):
            entry = await _drive(base, usable, clients, opts.throughput_s)
            out[f"{system}@{clients}"] = entry
            _log(
                f"    {system} x{clients:2d}: {entry['rps']:8.1f} req/s  "
                f"p50 {entry['p50']:8.1f}ms  p95 {entry['p95']:8.1f}ms  errors {entry['errors']}"
            )
    for clients in opts.clients:
        a, c = out[f"a@{clients}"], out[f"c@{clients}"]
        out[f"a_over_c@{clients}"] = round(a["rps"] / c["rps"], 2) if c["rps"] else None
    shallow = [q for q in usable if not q.min_matches]
    if len(shallow) < len(usable):
        # the same at the first client count without the deep-offset walk, which
        # dominates the service's mix (informative; the target uses the whole mix)
        clients = opts.clients[0]
        for system, base in (("a", stack.api_url), ("c", stack.prefect_url)):
            entry = await _drive(base, shallow, clients, opts.throughput_s)
            out[f"shallow:{system}@{clients}"] = entry
            _log(
                f"    {system} x{clients:2d} without deep offsets: {entry['rps']:8.1f} req/s  "
                f"p95 {entry['p95']:8.1f}ms"
            )
        a, c = out[f"shallow:a@{clients}"], out[f"shallow:c@{clients}"]
        out[f"shallow:a_over_c@{clients}"] = round(a["rps"] / c["rps"], 2) if c["rps"] else None
    return out


class ArtifactFactory:
    """New artifacts that reference existing flow runs (and their task runs) of the dataset."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.rng = random.Random(seed)
        self.runs = [r["id"] for r in dataset.flow_runs]
        self.tasks: dict[str, list[str]] = {}
        for task in dataset.task_runs:
            if task["flow_run_id"] is not None:
                self.tasks.setdefault(task["flow_run_id"], []).append(task["id"])

    def make(
        self, key: str | None, created_us: int, flow_run_id: str | None = None
    ) -> dict[str, Any]:
        run = flow_run_id or self.runs[self.rng.randrange(len(self.runs))]
        tasks = self.tasks.get(run)
        return {
            "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "created": format_timestamp(created_us),
            "updated": format_timestamp(created_us),
            "key": key,
            "type": "markdown",
            "description": "benchmark probe",
            "data": "# fresh",
            "metadata_": None,
            "flow_run_id": run,
            "task_run_id": tasks[0] if tasks and flow_run_id is None else None,
        }


async def wait_caught_up(stack: Stack, timeout_s: float) -> float:
    """Wait (bounded) until the indexer has committed everything published so far."""
    t0 = time.perf_counter()
    ends = await end_offsets(entity_and_member_topics(stack.topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        while await lag(stack.kafka, admin, ends) > 0:
            stack.indexer.check()
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"the indexer did not catch up within {timeout_s:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await admin.close()
    return time.perf_counter() - t0


POLL_KEYS = 1000
"""Pending keys asked per freshness poll, the oldest first."""


async def freshness(
    stack: Stack,
    dataset: Dataset,
    http: httpx.AsyncClient,
    opts: Options,
    rate: int,
    seconds: float,
) -> dict[str, Any]:
    """Steady rate of new keyed artifacts; produce -> visible to a key `any_` search.

    Every 50 ms the oldest `POLL_KEYS` keys not seen yet are asked. Once more than that
    many are pending (over a second behind at 1,000/s), a younger key is noticed only when
    it enters the window, so its latency can be overstated, never understated."""
    idle = await wait_caught_up(stack, opts.idle_timeout_s)
    _log(f"  freshness: {rate} events/s for {seconds:.0f}s (caught up after {idle:.1f}s)")
    # new ids at every rate: with one seed the 1,000/s run re-sent the 200/s run's ids
    # under new keys, so its first 4,000 artifacts were key moves, not new artifacts
    factory = ArtifactFactory(dataset, opts.seed + 1 + rate)
    tag = uuid.uuid4().hex[:8]
    producer = await make_producer()
    sent: dict[str, float] = {}
    pending: dict[str, float] = {}
    seen: dict[str, float] = {}
    per_tick = max(1, rate // 100)
    ticks = int(seconds * 100)
    sending = True
    saturated: list[float] = []
    last_seen = [0.0]
    polls: list[tuple[int, int]] = []  # (keys asked, Elasticsearch's `took` in ms)

    async def sender() -> None:
        nonlocal sending
        start = time.perf_counter()
        counter = 0
        try:
            for tick in range(ticks):
                if len(pending) > rate * 5:  # 5 s behind: saturated, stop adding backlog
                    saturated.append(time.perf_counter() - start)
                    break
                delay = start + tick / 100 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                for _ in range(per_tick):
                    key = f"fresh-{tag}-{counter}"
                    counter += 1
                    art = factory.make(key, now_us())
                    record = artifact_event(art, now_us())
                    t = time.perf_counter()
                    await producer.send(
                        stack.kafka.topic_for("artifact"), value=record[2], key=record[1]
                    )
                    sent[key] = t
                    pending[key] = t
        finally:
            sending = False

    async def poller() -> None:
        drain_deadline: float | None = None
        while True:
            if not sending:
                drain_deadline = drain_deadline or time.perf_counter() + 30
                if not pending or time.perf_counter() > drain_deadline:
                    return
            # the oldest: sent first. At most POLL_KEYS: a terms query costs Elasticsearch
            # per key, and a poll of every pending key, 20 times a second, grew with the
            # backlog it measured (5,000 keys a poll once 5 s behind)
            keys = list(itertools.islice(pending, POLL_KEYS))
            if keys:
                flt = ArtifactFilter.model_validate({"key": {"any_": keys}})
                q = translate_artifact_query(flt, None, None, None, None)
                body = build_search_body(
                    q,
                    sort_clauses(ArtifactReadRequest().sort, False),
                    collection=False,
                    size=len(keys),
                    from_=0,
                )
                body["_source"] = {"includes": ["key"]}
                resp = await http.post(
                    f"{ES_URL}/{stack.names.artifacts}/_search",
                    content=orjson.dumps(body),
                    headers={"content-type": "application/json"},
                    params={"filter_path": "took,hits.hits._source"},
                )
                now = time.perf_counter()
                polls.append((len(keys), orjson.loads(resp.content).get("took", 0)))
                for hit in orjson.loads(resp.content).get("hits", {}).get("hits", []):
                    key = hit["_source"]["key"]
                    if key in pending:
                        seen[key] = now - pending.pop(key)
                        last_seen[0] = now
            await asyncio.sleep(0.05)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(sender(), poller())
        await producer.flush()
    finally:
        await producer.stop()
    send_s = max(sent.values(), default=t0) - t0
    lat = list(seen.values())
    out = {
        "rate_target": rate,
        "seconds": seconds,
        "saturated_after_s": round(saturated[0], 1) if saturated else None,
        "sent": len(sent),
        "rate_achieved": round(len(sent) / send_s, 1) if send_s else None,
        "visible_per_s": round(len(seen) / (last_seen[0] - t0), 1) if seen else None,
        "visible": len(seen),
        "not_visible_after_30s": len(pending),
        "p50_s": round(pct(lat, 0.5), 3),
        "p95_s": round(pct(lat, 0.95), 3),
        "p99_s": round(pct(lat, 0.99), 3),
        "max_s": round(max(lat), 3) if lat else None,
        "poll_interval_s": 0.05,
        "polls": len(polls),
        "poll_keys_mean": round(statistics.fmean(k for k, _ in polls), 1) if polls else None,
        "poll_took_ms_mean": round(statistics.fmean(t for _, t in polls), 2) if polls else None,
    }
    _log(f"    freshness p50 {out['p50_s']}s p99 {out['p99_s']}s ({len(seen)}/{len(sent)} visible)")
    return out


async def propagation(
    stack: Stack, dataset: Dataset, http: httpx.AsyncClient, opts: Options
) -> dict[str, Any]:
    """One flow run with N artifacts changes state: time until a state filter counts all N."""
    out: dict[str, Any] = {}
    factory = ArtifactFactory(dataset, opts.seed + 2)
    for size in opts.propagation:
        await wait_caught_up(stack, opts.idle_timeout_s)
        _log(f"  propagation: one flow run, {size:,} artifacts")
        template = dict(dataset.flow_runs[0])
        run_id = str(uuid.uuid4())
        created = now_us()
        run = {
            **template,
            "id": run_id,
            "name": f"bench-propagation-{size}",
            "state_type": "RUNNING",
            "state_name": "Running",
            "idempotency_key": None,
            "parent_task_run_id": None,
            "created": format_timestamp(created),
            "updated": format_timestamp(created),
        }
        producer = await make_producer()
        try:
            version = now_us()
            records: list[tuple[str, bytes, Any]] = [
                (
                    "flow_run",
                    run_id.encode(),
                    encode_event("flow_run", run_id, "upsert", version, run),
                )
            ]
            for i in range(size):
                art = factory.make(f"prop-{run_id[:8]}-{i % 50}", created + i, run_id)
                records.append(artifact_event(art, version))
            await publish(producer, stack.kafka, records)
            by_run = {"flow_runs": {"id": {"any_": [run_id]}}}
            t_setup = time.perf_counter()
            while await api_count(http, stack.api_url, "/artifacts/count", by_run) < size:
                if time.perf_counter() - t_setup > 300:
                    raise TimeoutError("propagation setup did not converge in 300s")
                await asyncio.sleep(0.2)
            setup_s = time.perf_counter() - t_setup
            done_run = {**run, "state_type": "COMPLETED", "state_name": "Completed"}
            done_run["updated"] = format_timestamp(now_us())
            body = {
                "flow_runs": {"id": {"any_": [run_id]}, "state": {"type": {"any_": ["COMPLETED"]}}}
            }
            t0 = time.perf_counter()
            await producer.send_and_wait(
                stack.kafka.topic_for("flow_run"),
                value=encode_event("flow_run", run_id, "upsert", version + 1, done_run),
                key=run_id.encode(),
            )
            acked = time.perf_counter() - t0
            polls = 0
            while True:
                got = await api_count(http, stack.api_url, "/artifacts/count", body)
                polls += 1
                if got >= size:
                    break
                if time.perf_counter() - t0 > 300:
                    raise TimeoutError(f"propagation of {size} not done in 300s ({got})")
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - t0
        finally:
            await producer.stop()
        out[str(size)] = {
            "seconds": round(seconds, 3),
            "produce_ack_s": round(acked, 3),
            "setup_s": round(setup_s, 2),
            "polls": polls,
        }
        _log(f"    {size:,} artifacts updated in {seconds:.2f}s")
    return out


# ----------------------------------------------------------------------------- main


async def amain(opts: Options) -> dict[str, Any]:
    from tests.benchmarks import report

    for address in (KAFKA, ES_URL, PG_DSN.split("@")[-1]):
        _check_local(address)
    started = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    machine = await report.machine_info(ES_URL, PG_DSN)
    machine["load_avg_start"] = os.getloadavg()
    _log(f"machine: {machine['nproc']} cpus, {machine['mem_gib']} GiB, {machine['cpu']}")
    results: dict[str, Any] = {
        "mode": "quick" if opts.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "options": {
            k: _repo_relative(v)
            if isinstance(v, Path)
            else sorted(v)
            if isinstance(v, frozenset)
            else v
            for k, v in asdict(opts).items()
        },
        "machine": machine,
        "scales": {},
    }
    for n in opts.scales:
        results["scales"][str(n)] = await run_scale(opts, n, machine)
    if opts.indexer_only:
        machine["load_avg_end"] = os.getloadavg()
        results["total_s"] = round(time.perf_counter() - started, 1)
        (opts.out / "results-indexer.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(_indexer_summary(results), indent=1), flush=True)
        return results
    if opts.queries_only or opts.search_only:
        machine["load_avg_end"] = os.getloadavg()
        results["total_s"] = round(time.perf_counter() - started, 1)
        name = "results-queries.json" if opts.queries_only else "results-search.json"
        (opts.out / name).write_text(json.dumps(results, indent=1))
        print(json.dumps({n: r["search"] for n, r in results["scales"].items()}, indent=1))
        return results
    from tests.benchmarks.alert_latency import alert_latency  # it imports `pct` from here

    rate, seconds = opts.alerts
    _log(f"alert latency: {rate} events/s for {seconds:.0f}s, 20 saved searches")
    results["alerts"] = await alert_latency(
        rate, seconds, 20, REPO_ROOT / ".local" / "bench" / "alert-latency"
    )
    _log(f"  alert latency {results['alerts']}")
    from tests.benchmarks.sync_bench import sync_bench  # it imports `pct` from here

    artifacts, rate, seconds = opts.sync
    _log(
        f"live sync: {artifacts:,} artifacts in Prefect, "
        f"then {rate:g} artifacts/s for {seconds:.0f}s"
    )
    results["sync"] = await sync_bench(
        artifacts, rate, seconds, opts.seed, REPO_ROOT / ".local" / "bench" / "sync"
    )
    _log(f"  live sync {results['sync']}")
    machine["load_avg_end"] = os.getloadavg()
    results["total_s"] = round(time.perf_counter() - started, 1)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"results-{results['mode']}.json").write_text(json.dumps(results, indent=1))
    report.write_all(results, opts.out)
    print(report.summary(results), flush=True)
    return results


def _dig_ratio(scale: dict[str, Any], label: str) -> float:
    """A side load's indexer / raw `_bulk` ratio in a scale's results."""
    side = scale["load_replicas"]["2"] if label == "replicas" else scale[f"load_{label}"]
    return float(side["indexer_vs_bulk"])


def _indexer_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an --indexer-only run, per scale."""
    out: dict[str, Any] = {}
    for n, r in results["scales"].items():
        out[n] = {
            "load_s": r["load"]["seconds"],
            "load_events_per_s": r["load"]["events_per_s"],
            "bulk_s": r["ceiling"]["seconds"],
            "indexer_vs_bulk": r["ceiling"]["indexer_vs_bulk"],
            **{
                f"{label}_vs_bulk": _dig_ratio(r, label)
                for label in SIDE_LOADS
                if label not in results["options"]["skip"]
            },
            "writes_per_document": r["load"].get("writes_per_document"),
            "freshness": {
                rate: {k: f.get(k) for k in ("p50_s", "p99_s", "saturated_after_s")}
                for rate, f in r["freshness"].items()
            },
            "propagation": r["propagation"],
            "rss_mib": r["rss_mib"],
            "restart": r["restart"],
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_options(argv)
    asyncio.run(amain(opts))


def _repo_relative(path: Path) -> str:
    """A path for the results file: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
