"""Turn the benchmark's raw results into RESULTS.md, SIZING.md and PNG plots."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.benchmarks.procs import REPO_ROOT

# ----------------------------------------------------------------------------- machine


async def machine_info(es_url: str, pg_dsn: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "mem_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for dist in ("prefect", "elasticsearch", "aiokafka", "faststream", "fastapi", "uvicorn"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "?"
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            nodes = (
                await http.get(
                    f"{es_url}/_nodes/_local",
                    params={"filter_path": "nodes.*.version,nodes.*.jvm.version,nodes.*.jvm.mem"},
                )
            ).json()["nodes"]
            node = next(iter(nodes.values()))
            heap = node["jvm"].get("mem", {}).get("heap_max_in_bytes", 0)
            info["elasticsearch_server"] = (
                f"{node['version']} (JVM {node['jvm']['version']}, heap {heap / 2**30:.1f} GiB)"
            )
        except (httpx.HTTPError, KeyError, StopIteration):
            info["elasticsearch_server"] = "?"
    try:
        conn = await asyncpg.connect(pg_dsn)
        try:
            info["postgresql"] = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        info["postgresql"] = "?"
    libs = REPO_ROOT / ".local" / "kafka" / "libs"
    jars = sorted(p.name for p in libs.glob("kafka_*.jar")) if libs.is_dir() else []
    info["kafka"] = jars[0].removesuffix(".jar").split("-", 1)[-1] if jars else "?"
    info["git"] = _git_head()
    return info


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "?"


def _meminfo_kib(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# ----------------------------------------------------------------------------- targets

MET, MISSED, NA = "met", "**missed**", "not evaluated"
ANALYSIS = Path(__file__).with_name("analysis.md")
"""Why targets are missed and what was done: a hand-written section of RESULTS.md."""


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _saturation(fresh: dict[str, Any]) -> str:
    after = fresh.get("saturated_after_s")
    return "no" if after is None else f"after {after:.0f} s"


def _is_deep(name: str, entry: dict[str, Any]) -> bool:
    return bool(entry.get("deep")) or "offset" in name


def _queries(scale: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in scale.get("latency", {}).items() if "skipped" not in v}


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, scale, measured, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []
    for name, scale in results["scales"].items():
        n = int(name)
        label = f"{n:,}"
        qs = _queries(scale)
        if not qs:
            continue
        over = {k: v["a_over_b"] for k, v in qs.items()}
        worst = max(over, key=lambda k: over[k])
        missed = sorted(k for k, r in over.items() if r > 1.25)
        rows.append(
            (
                "service p50 <= 1.25x raw Elasticsearch (every query)",
                label,
                f"worst {worst} {over[worst]:.2f}x; {len(over) - len(missed)}/{len(over)} within"
                + (f" (over: {', '.join(missed)})" if missed else ""),
                MISSED if missed else MET,
            )
        )
        joins = {k: v["c_over_a"] for k, v in qs.items() if v["join"]}
        if joins:
            low = min(joins, key=lambda k: joins[k])
            verdict = (MET if joins[low] >= 10 else MISSED) if n >= 1_000_000 else NA
            rows.append(
                (
                    ">= 10x faster than Prefect on join-heavy queries at 1M (p50)",
                    label,
                    f"slowest speed-up {low} {joins[low]:.1f}x",
                    verdict + ("" if n >= 1_000_000 else " (target is at 1M)"),
                )
            )
        every = {k: v["c_over_a"] for k, v in qs.items()}
        low = min(every, key=lambda k: every[k])
        below = sorted(k for k, r in every.items() if r < 2)
        at_100k = 100_000 <= n < 1_000_000
        verdict = (MISSED if below else MET) if at_100k else NA + " (target is at 100k)"
        rows.append(
            (
                ">= 2x faster than Prefect on every query at 100k (p50)",
                label,
                f"slowest speed-up {low} {every[low]:.1f}x"
                + (f"; below 2x: {', '.join(below)}" if below else ""),
                verdict,
            )
        )
        tp = scale.get("throughput", {})
        ratio = tp.get("a_over_c@8")
        if ratio is not None:
            rows.append(
                (
                    "throughput >= 5x Prefect at 8 clients",
                    label,
                    f"{tp['a@8']['rps']:,.0f} vs {tp['c@8']['rps']:,.0f} req/s = {ratio:.1f}x"
                    + (
                        f" (without the deep-offset query: {tp['shallow:a_over_c@8']:.1f}x)"
                        if tp.get("shallow:a_over_c@8") is not None
                        else ""
                    ),
                    MET if ratio >= 5 else MISSED,
                )
            )
        ceiling = scale.get("ceiling", {})
        if ceiling:
            r = ceiling["indexer_vs_bulk"]
            rows.append(
                (
                    "indexer >= 0.7x of raw _bulk",
                    label,
                    f"{scale['load']['events_per_s']:,} events/s end-to-end vs "
                    f"{ceiling['events_per_s_equivalent']:,} for the bulk = {r:.2f}x",
                    MET if r >= 0.7 else MISSED,
                )
            )
        fresh = scale.get("freshness", {}).get("1000")
        if fresh:
            p99 = fresh["p99_s"]
            sat = fresh.get("saturated_after_s")
            ok = p99 <= 2 and not fresh["not_visible_after_30s"] and sat is None
            rows.append(
                (
                    "freshness p99 <= 2 s at 1,000 events/s",
                    label,
                    f"p50 {fresh['p50_s']:.2f}s, p99 {p99:.2f}s at "
                    f"{fresh['rate_achieved']:,.0f} events/s"
                    + (
                        f"; saturated after {sat:.0f}s (indexed "
                        f"{_fmt(fresh.get('visible_per_s'), 0)}/s)"
                        if sat is not None
                        else ""
                    ),
                    MET if ok else MISSED,
                )
            )
        prop = scale.get("propagation", {})
        if "10000" in prop:
            s = prop["10000"]["seconds"]
            rows.append(
                (
                    "propagation to 10k artifacts <= 5 s",
                    label,
                    f"{s:.2f}s",
                    MET if s <= 5 else MISSED,
                )
            )
        elif "1000" in prop:
            rows.append(
                (
                    "propagation to 10k artifacts <= 5 s",
                    label,
                    f"1k artifacts: {prop['1000']['seconds']:.2f}s (10k runs in full mode)",
                    NA,
                )
            )
    return rows


# ----------------------------------------------------------------------------- plots


def plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mode = results["mode"]
    made: list[str] = []
    for name, scale in results["scales"].items():
        qs = _queries(scale)
        if not qs:
            continue
        labels = list(qs)
        fig, ax = plt.subplots(figsize=(12, 5.5))
        width = 0.27
        xs = range(len(labels))
        for offset, (system, title, color) in enumerate(
            (
                ("a", "this service (HTTP)", "#1f77b4"),
                ("b", "raw Elasticsearch", "#2ca02c"),
                ("c", "Prefect 3.9.1 / PostgreSQL", "#d62728"),
            )
        ):
            p50 = [qs[q][system]["p50"] for q in labels]
            p95 = [qs[q][system]["p95"] for q in labels]
            pos = [x + (offset - 1) * width for x in xs]
            ax.bar(pos, p50, width, label=f"{title} p50", color=color)
            ax.errorbar(
                pos,
                p50,
                yerr=[[0] * len(p50), [max(b - a, 0) for a, b in zip(p50, p95, strict=True)]],
                fmt="none",
                ecolor="black",
                capsize=2,
                linewidth=0.8,
            )
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log; bar = p50, whisker = p95)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(
            [q + (" *" if qs[q]["join"] else "") for q in labels], rotation=35, ha="right"
        )
        ax.set_title(f"Query latency, {int(name):,} artifacts (* = join-heavy in Prefect)")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        file = f"latency-{mode}-{name}.png"
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        made.append(file)

        tp = scale.get("throughput", {})
        clients = sorted({int(k.split("@")[1]) for k in tp if k[:2] in ("a@", "c@")})
        clients = [c for c in clients if f"a@{c}" in tp]
        if clients:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for offset, (system, title, color) in enumerate(
                (("a", "this service", "#1f77b4"), ("c", "Prefect 3.9.1", "#d62728"))
            ):
                rps = [tp[f"{system}@{c}"]["rps"] for c in clients]
                pos = [i + (offset - 0.5) * 0.38 for i in range(len(clients))]
                bars = ax.bar(pos, rps, 0.38, label=title, color=color)
                for bar, c in zip(bars, clients, strict=True):
                    ax.annotate(
                        f"p95 {tp[f'{system}@{c}']['p95']:.0f} ms",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
            ax.set_xticks(range(len(clients)))
            ax.set_xticklabels([f"{c} clients" for c in clients])
            ax.set_ylabel("requests/s over the query mix")
            ax.set_title(f"Throughput, {int(name):,} artifacts")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            file = f"throughput-{mode}-{name}.png"
            fig.savefig(out / file, dpi=110)
            plt.close(fig)
            made.append(file)
    return made


# ----------------------------------------------------------------------------- RESULTS.md


def results_md(results: dict[str, Any], images: list[str]) -> str:
    m = results["machine"]
    mode = results["mode"]
    cmd = "make bench-quick" if mode == "quick" else "make bench"
    la0 = ", ".join(f"{x:.2f}" for x in m.get("load_avg_start", ()))
    la1 = ", ".join(f"{x:.2f}" for x in m.get("load_avg_end", ()))
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{cmd}` (`python -m tests.benchmarks.run"
        f"{' --quick' if mode == 'quick' else ''}`) on {results['started']}, "
        f"git `{m.get('git', '?')}`; the whole run took {results['total_s']:.0f} s. "
        "Raw numbers: "
        f"[results-{mode}.json](results-{mode}.json). Method: see the end of this file.",
        "",
        f"> **One small machine.** Every process of the benchmark (Kafka, Elasticsearch, "
        "PostgreSQL, the indexer, the API, Prefect and the load generator itself) ran on "
        f"the same {m['nproc']} CPUs (load average {la0} at the start, {la1} at the end). "
        "Absolute figures are therefore pessimistic and noisy; ratios between systems "
        "measured in the same interleaved loop are the more reliable figures.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs (nproc) | {m['nproc']} ({m['cpu']}) |",
        f"| RAM | {m['mem_gib']} GiB |",
        f"| kernel / Python | {m['kernel']} / {m['python']} |",
        f"| Elasticsearch | {m['elasticsearch_server']}, single node, 1 shard, 0 replicas |",
        f"| Kafka | {m['kafka']} (KRaft, single node), 3 partitions per topic |",
        f"| PostgreSQL | {m['postgresql']} (C collation) |",
        f"| Prefect | {m['prefect']} (uvicorn, 1 worker, default DB pool) |",
        f"| client libraries | elasticsearch-py {m['elasticsearch']}, aiokafka {m['aiokafka']}, "
        f"faststream {m['faststream']}, fastapi {m['fastapi']}, uvicorn {m['uvicorn']} |",
        "",
        "## Targets",
        "",
        "| target | scale | measured | verdict |",
        "|---|---|---|---|",
    ]
    for target, scale, measured, verdict in targets(results):
        lines.append(f"| {target} | {scale} | {measured} | {verdict} |")
    lines += [
        "",
        "Targets stated for 100k and 1M are marked *not evaluated* on other scales; the "
        "figure shown is indicative only.",
    ]
    if results["mode"] == "full" and ANALYSIS.exists():
        # written by hand from this run's figures; regenerate with --report after editing
        lines += ["", ANALYSIS.read_text().strip()]
    lines += [
        "",
        "## Datasets",
        "",
        "Seeded `services.datagen` datasets (`DatasetScale.for_artifacts(n)`, seed "
        f"{results['options']['seed']}), published as the event stream of "
        "`services.events.dataset_records` (no noise: one upsert per entity, deletes as "
        "upsert + delete or tombstone).",
        "",
        "| artifacts | flows | deployments | flow runs | task runs | collections | deleted "
        "entities | events | event bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scale in results["scales"].values():
        d = scale["dataset"]
        lines.append(
            f"| {d['artifacts']:,} | {d['flows']:,} | {d['deployments']:,} | "
            f"{d['flow_runs']:,} | {d['task_runs']:,} | {d['collections']:,} | "
            f"{d['deleted']:,} | {d['events']:,} | {d['event_bytes'] / 2**20:,.1f} MiB |"
        )
    lines += [
        "",
        "## Initial load: indexer vs raw `_bulk`",
        "",
        "| artifacts | events | publish | end-to-end | events/s | final docs | raw `_bulk` + "
        "refresh | bulk docs/s | indexer / bulk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, scale in results["scales"].items():
        ld, c = scale.get("load"), scale.get("ceiling")
        if not ld or not c:
            continue
        lines.append(
            f"| {int(name):,} | {ld['events']:,} | {ld['publish_s']:.1f} s "
            f"({ld['publish_events_per_s']:,}/s) | {ld['seconds']:.1f} s | "
            f"{ld['events_per_s']:,} | {c['documents']:,} | {c['seconds']:.2f} s | "
            f"{c['documents_per_s']:,} | {c['indexer_vs_bulk']:.2f} |"
        )
    lines += ["", "## Query latency (sequential, one request at a time)", ""]
    for name, scale in results["scales"].items():
        lat = scale.get("latency", {})
        if not lat:
            continue
        n_meas = {v["a"]["n"] for v in _queries(scale).values()}
        lines += [
            f"### {int(name):,} artifacts",
            "",
            "(a) this service over HTTP, (b) the same translated request straight to "
            "Elasticsearch, (c) Prefect 3.9.1 over HTTP. Milliseconds; "
            f"{results['options']['warmup']} warm-up + "
            f"{min(n_meas) if min(n_meas) == max(n_meas) else f'{min(n_meas)}-{max(n_meas)}'} "
            "measured "
            "iterations per query. `join` = the filter reaches a flow run, flow, deployment "
            "or task run (EXISTS sub-queries in Prefect).",
            "",
            "| query | join | (a) p50 | (a) p95 | (b) p50 | (b) p95 | (c) p50 | (c) p95 | a/b | "
            "c/a | answers |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for q, v in lat.items():
            if "skipped" in v:
                lines.append(f"| {q} | | skipped: {v['skipped']} | | | | | | | | |")
                continue
            agree = "same" if v["answers_agree"] else f"differ {v['answers']}"
            lines.append(
                f"| {q} | {'yes' if v['join'] else ''} | {v['a']['p50']:.2f} | "
                f"{v['a']['p95']:.2f} | {v['b']['p50']:.2f} | {v['b']['p95']:.2f} | "
                f"{v['c']['p50']:.1f} | {v['c']['p95']:.1f} | {v['a_over_b']:.2f} | "
                f"{v['c_over_a']:.1f} | {agree} |"
            )
        img = f"latency-{mode}-{name}.png"
        if img in images:
            lines += ["", f"![latency per query]({img})"]
        lines.append("")
    lines += ["## Throughput (concurrent clients over the mix)", ""]
    lines += [
        "| artifacts | system | clients | requests/s | p50 ms | p95 ms | errors | "
        "service / Prefect |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, scale in results["scales"].items():
        tp = scale.get("throughput", {})
        for key, v in tp.items():
            if "a_over_c" in key or not isinstance(v, dict):
                continue
            mix, _, rest = key.rpartition(":")
            system, clients = rest.split("@")
            ratio = (
                tp.get(f"{mix + ':' if mix else ''}a_over_c@{clients}") if system == "a" else None
            )
            label = ("service" if system == "a" else "Prefect") + (
                " (mix without deep offset)" if mix else ""
            )
            lines.append(
                f"| {int(name):,} | {label} | {clients} | "
                f"{v['rps']:,.1f} | {v['p50']:.1f} | {v['p95']:.1f} | {v['errors']} | "
                f"{_fmt(ratio)} |"
            )
    for name in results["scales"]:
        img = f"throughput-{mode}-{name}.png"
        if img in images:
            lines += ["", f"![throughput]({img})"]
    lines += [
        "",
        "## Indexing freshness and propagation",
        "",
        "Freshness: publish -> visible to a `key any_` search, at a light rate and at the "
        "target rate. A run stops publishing once 5 s of events are not yet visible "
        "(*saturated*: the indexer cannot sustain that rate); keys still not visible "
        "30 s after the last publish count as not visible.",
        "",
        "| artifacts | target events/s | sent at | seconds | visible | indexed/s | saturated | "
        "p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, scale in results["scales"].items():
        for f in scale.get("freshness", {}).values():
            lines.append(
                f"| {int(name):,} | {f['rate_target']:,} | {_fmt(f['rate_achieved'], 0)} | "
                f"{f['seconds']:.0f} | {f['visible']:,}/{f['sent']:,} | "
                f"{_fmt(f.get('visible_per_s'), 0)} | "
                f"{_saturation(f)} | "
                f"{f['p50_s']:.2f} s | "
                f"{f['p95_s']:.2f} s | {f['p99_s']:.2f} s | {_fmt(f['max_s'])} s |"
            )
    lines += [
        "",
        "Propagation: one flow run's state change -> all its artifacts match a "
        "`flow_runs.state` filter.",
        "",
        "| artifacts | artifacts of the flow run | seconds | produce ack |",
        "|---|---|---|---|",
    ]
    for name, scale in results["scales"].items():
        for k, v in scale.get("propagation", {}).items():
            lines.append(
                f"| {int(name):,} | {int(k):,} | {v['seconds']:.2f} s | "
                f"{v['produce_ack_s']:.3f} s |"
            )
    lines += [
        "",
        "## Memory and index size",
        "",
        "| artifacts | indexer peak RSS | API peak RSS | Prefect peak RSS | artifact bytes/doc | "
        "collection bytes/doc | entity bytes/doc |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, scale in results["scales"].items():
        rss = scale.get("rss_mib", {})
        idx = scale.get("ceiling", {}).get("indices", {})

        def bpd(alias: str, idx: dict[str, Any] = idx) -> str:
            return _fmt(idx.get(alias, {}).get("bytes_per_doc"), 0)

        lines.append(
            f"| {int(name):,} | {_fmt(rss.get('indexer'), 0)} MiB | {_fmt(rss.get('api'), 0)} MiB"
            f" | {_fmt(rss.get('prefect'), 0)} MiB | {bpd('artifacts')} | {bpd('collections')} | "
            f"{bpd('entities')} |"
        )
    profiles = sorted(p.name for p in (REPO_ROOT / "docs" / "benchmarks").glob("profile-*.txt"))
    if profiles:
        lines += ["", "Profiles: " + ", ".join(f"[{p}]({p})" for p in profiles)]
    lines += ["", METHOD]
    return "\n".join(lines) + "\n"


METHOD = """## Method

- **Load.** The dataset's events go to fresh, uniquely named topics (3 partitions)
  with aiokafka (`acks=all`); the indexer runs as its own process
  (`python -m services.cli indexer`, uniquely prefixed indices, its own consumer
  group). A probe flow event is consumed first, so the consumer group is live when
  the clock starts at the first publish. *End-to-end* stops when the group's
  committed offsets reach the end of every topic **and** the API's `count` and
  `latest/count` equal the dataset's. The *raw `_bulk`* ceiling reads the final
  documents of the three indices back (point in time + `search_after`, not timed),
  then bulk-indexes them (1,000 documents per request, 2 in flight, as the
  indexer's defaults) into fresh indices with the same mappings and settings; only
  the bulk requests and the final refresh are timed. *indexer / bulk* is
  bulk seconds / end-to-end seconds (both for the same events).
- **Latency.** `tests/benchmarks/query_mix.json` holds the bodies. Per query:
  warm-up, then measured iterations, each sending the body to (a), (b) and (c)
  in rotating order so that the three share machine conditions; a query stops
  after its time budget once it has at least 5 measured iterations. (b) passes
  the same request through `services.prefect.requests`, `query.translate` and
  `query.sort` once, then runs `query.repository.Repository` (same bodies,
  `filter_path`, and point-in-time walk for deep offsets) over plain aiohttp instead
  of the Elasticsearch client. All three are timed by the same aiohttp client in
  the benchmark process. `answers` compares result counts (lists: lengths) of
  (a), (b) and (c).
- **Throughput.** N asyncio workers (one aiohttp connection each) cycle through the
  mix for a fixed time; requests/s counts completed 200 answers. The load
  generator shares the CPUs with the servers, so this is a lower bound.
- **Freshness.** New artifacts with unique keys (referencing existing flow runs)
  are published at a steady rate (10 per 10 ms tick); a poller runs the
  translated `key any_` search (what the API sends) every 50 ms and records
  publish -> first seen. Visibility includes Elasticsearch's 1 s refresh.
- **Propagation.** A new flow run with N artifacts is indexed, then one event
  changes its state to COMPLETED; the API's count with a `flow_runs.state` filter
  is polled every 50 ms until it counts all N.
- **RSS.** `VmHWM` from `/proc/<pid>/status` of the indexer, API and Prefect
  processes at the end of the scale.
- **Prefect.** `tests/benchmarks/prefect_server.py` loads the same dataset with the
  conformance oracle's loading code (Prefect's migrations, then direct SQL) into
  a database reused across runs, and serves Prefect's FastAPI app with uvicorn
  (1 worker, lifespan off, so no background services).
"""


# ----------------------------------------------------------------------------- SIZING.md


def sizing_md(results: dict[str, Any]) -> str:
    name, scale = max(
        ((k, v) for k, v in results["scales"].items() if v.get("ceiling")),
        key=lambda kv: int(kv[0]),
    )
    n = int(name)
    d = scale["dataset"]
    idx = scale["ceiling"]["indices"]
    target = 100_000_000
    gb = 1e9
    art_b = idx["artifacts"]["bytes_per_doc"]
    col_b = idx["collections"]["bytes_per_doc"]
    ent_b = idx["entities"]["bytes_per_doc"]
    col_per = idx["collections"]["docs"] / d["artifacts"]
    ent_per = idx["entities"]["docs"] / d["artifacts"]
    art_docs = idx["artifacts"]["docs"] / d["artifacts"]
    art_total = target * art_docs * art_b
    col_total = target * col_per * col_b
    ent_total = target * ent_per * ent_b
    primary = art_total + col_total + ent_total
    shard_gb = 30
    storage_shards = max(1, math.ceil(art_total / gb / shard_gb))
    col_shards = max(1, math.ceil(col_total / gb / shard_gb))
    ent_shards = max(1, math.ceil(ent_total / gb / shard_gb))
    replicas = 1
    disk = primary * (1 + replicas) / 0.75  # stay under the 85 % watermark with margin

    # query cost = fixed part + per-document part (per shard), from the shallow queries
    def median_b(sc: dict[str, Any]) -> float:
        vals = [v["b"]["p50"] for k, v in _queries(sc).items() if not _is_deep(k, v)]
        return statistics.median(vals)

    measured = sorted(
        ((int(k), v) for k, v in results["scales"].items() if _queries(v)), key=lambda kv: kv[0]
    )
    fixed_ms = median_b(measured[0][1])
    if len(measured) >= 2:
        (n_s, s_s), (n_l, s_l) = measured[0], measured[-1]
        per_doc_ms = max((median_b(s_l) - median_b(s_s)) / ((n_l - n_s) * art_docs), 0.0)
        per_doc_src = (
            f"fitted between {n_s:,} and {n_l:,} artifacts: ({median_b(s_l):.2f} - "
            f"{median_b(s_s):.2f}) ms / {(n_l - n_s) * art_docs:,.0f} docs"
        )
    else:
        per_doc_ms = 5e-6
        per_doc_src = (
            "**assumed** (one scale only: the quick run cannot fit the growth; the full "
            "run's 100k and 1M replace it with a fitted value): about what a top-k sort over "
            "doc values costs per matching document on one core. Charging it for every "
            "document makes this an upper bound: selective filters touch far fewer"
        )
    docs_total = target * art_docs
    budget_ms = 100.0
    latency_shards = math.ceil(docs_total * per_doc_ms / max(budget_ms - fixed_ms, 1.0))
    art_shards = max(storage_shards, latency_shards)
    docs_per_shard = docs_total / art_shards
    es_ms_100m = fixed_ms + per_doc_ms * docs_per_shard
    qps = 200
    core_ms_per_query = art_shards * fixed_ms + per_doc_ms * docs_total
    es_core_s = qps * core_ms_per_query / 1000
    es_cores = math.ceil(es_core_s / 0.6)
    qs = _queries(scale)
    shallow = [v for k, v in qs.items() if not _is_deep(k, v)]
    a_minus_b = statistics.median(max(v["a"]["p50"] - v["b"]["p50"], 0) for v in shallow)
    api_rps_core = 1000 / a_minus_b if a_minus_b > 0 else float("inf")
    api_replicas = max(2, math.ceil(qps / (api_rps_core * 0.6)))

    load = scale["load"]
    events_per_artifact = d["events"] / d["artifacts"]
    backfill_events = target * events_per_artifact
    per_indexer = load["events_per_s"]
    backfill_h = 24
    need = backfill_events / (backfill_h * 3600)
    indexers = max(2, math.ceil(need / per_indexer))
    partitions = max(12, 2 * indexers)
    steady = 2_000
    steady_indexers = max(2, math.ceil(steady / per_indexer))
    bulk_dps = scale["ceiling"]["documents_per_s"]

    closing = (
        "Re-derive with the full run (`make bench`, 100k and 1M): the 1M numbers replace "
        "these, and the growth factor from 100k to 1M shows whether query cost is really "
        "linear in shard size (the bound used above)."
        if results["mode"] == "quick"
        else "The per-document query cost above is fitted between the scales of this run; "
        "rerun `make bench` on the production hardware class and this file follows."
    )
    return f"""# Sizing for 100 million artifacts

Derived from the measurements of the **{n:,}-artifact** run of `{results["mode"]}` mode
([RESULTS.md](RESULTS.md), [results-{results["mode"]}.json](results-{results["mode"]}.json));
`python -m tests.benchmarks.run` regenerates this file from the largest scale it ran.
All inputs were measured on a 2-CPU machine shared by every process of the
benchmark, so per-core figures are conservative. Assumptions are marked
**(assumed)**; change them and redo the arithmetic below.

## 1. Storage

Measured on freshly bulk-loaded, force-merged indices (primary store bytes / docs):

| index | docs at {n:,} | docs per artifact | bytes/doc |
|---|---|---|---|
| artifacts | {idx["artifacts"]["docs"]:,} | {art_docs:.3f} | {art_b:,.0f} |
| collections | {idx["collections"]["docs"]:,} | {col_per:.3f} | {col_b:,.0f} |
| entities (snapshots, candidates) | {idx["entities"]["docs"]:,} | {ent_per:.3f} | {ent_b:,.0f} |

At 100M artifacts (same proportions as the generator: 1 flow run per 8 artifacts,
1 task run per 3, a key on 70 % of artifacts):

- artifacts: 100M x {art_docs:.3f} x {art_b:,.0f} B = **{art_total / gb:,.1f} GB**
- collections: 100M x {col_per:.3f} x {col_b:,.0f} B = **{col_total / gb:,.1f} GB**
- entities: 100M x {ent_per:.3f} x {ent_b:,.0f} B = **{ent_total / gb:,.1f} GB**
- primary total **{primary / gb:,.1f} GB**; with {replicas} replica and 25 % free disk
  headroom: {primary / gb:,.1f} x {1 + replicas} / 0.75 = **{disk / gb:,.0f} GB** of data-node disk.

The live indices also carry deleted (superseded) documents between merges
(see `loaded_indices` in the JSON: rewrites by fan-out); budget another 10-20 %.

## 2. Shards and replicas

Shard size target **{shard_gb} GB (assumed**, Elastic's 10-50 GB guidance for search):
storage alone needs ceil({art_total / gb:,.1f} / {shard_gb}) = {storage_shards} artifact
shards; the latency model below needs {latency_shards}; so **{art_shards} primary
shards** for artifacts ({docs_per_shard / 1e6:,.1f}M docs per shard, far below Lucene's
2^31 limit); collections ceil({col_total / gb:,.1f} / {shard_gb}) = **{col_shards}**,
entities ceil({ent_total / gb:,.1f} / {shard_gb}) = **{ent_shards}**; **{replicas}
replica** each for availability (add replicas, not shards, for query throughput).
Round artifact shards up to a multiple of the data-node count.

## 3. Query cost

Raw Elasticsearch time (b) per request = fixed + per-document part, per shard
(the deep-offset walk is left out: see RESULTS.md):

- fixed: median (b) p50 of the mix at {measured[0][0]:,} artifacts = **{fixed_ms:.2f} ms**
  (parse, filters on small postings, fetch 50 hits, network);
- per document: **{per_doc_ms * 1e6:,.1f} ns**, {per_doc_src}.

For a p50 budget of **{budget_ms:.0f} ms (assumed)** per shard (shards run in parallel):
ceil({docs_total / 1e6:,.0f}M x {per_doc_ms * 1e6:,.1f} ns / ({budget_ms:.0f} - {fixed_ms:.2f}) ms)
= {latency_shards} shards; with {art_shards} shards a query costs
{fixed_ms:.2f} + {per_doc_ms * 1e6:,.1f} ns x {docs_per_shard / 1e6:,.1f}M =
**{es_ms_100m:,.1f} ms** per shard, and {art_shards} x {fixed_ms:.2f} ms +
{per_doc_ms * 1e6:,.1f} ns x {docs_total / 1e6:,.0f}M = {core_ms_per_query:,.0f} core-ms in total.

CPU for **{qps} queries/s (assumed peak)**: {qps} x {core_ms_per_query:,.0f} ms =
{es_core_s:,.1f} core-seconds per second; at 60 % utilisation **{es_cores} search
cores** across the data nodes (e.g. {max(2, math.ceil(es_cores / 8))} data nodes of
8 vCPU, plus replicas for HA), with RAM for the page cache to hold the filtered
fields' doc values and postings (about the artifact index size, {art_total / gb:,.0f} GB,
across the nodes).

The service adds (a) - (b) = **{a_minus_b:.2f} ms** per request (median over the mix:
HTTP, validation, translation, JSON), i.e. about {api_rps_core:,.0f} requests/s per
fully-used core. For {qps} queries/s at 60 % utilisation:
max(2, ceil({qps} / ({api_rps_core:,.0f} x 0.6))) = **{api_replicas} API replicas**
(1 uvicorn worker each, 1 vCPU; at least 2 for availability).

## 4. Indexing

Measured end-to-end: **{per_indexer:,} events/s** for one indexer process
({load["artifacts_per_s"]:,} artifacts/s), against **{bulk_dps:,} docs/s** for a raw
`_bulk` of the final documents on the same node. The stream has {events_per_artifact:.2f}
events per artifact (the dataset's runs, task runs, flows and deployments).

- Initial backfill (replay of the compacted topics): 100M x {events_per_artifact:.2f} =
  {backfill_events / 1e6:,.0f}M events. To finish within **{backfill_h} h (assumed)**:
  {backfill_events / 1e6:,.0f}M / {backfill_h * 3600:,} s = {need:,.0f} events/s, i.e.
  ceil({need:,.0f} / {per_indexer:,}) = **{indexers} indexer replicas** (min. 2), provided
  the data nodes absorb the writes ({need:,.0f} events/s is
  {need / bulk_dps:.1f}x the single-node bulk rate measured here: scale data nodes
  with the shard count above).
- Steady state **{steady:,} events/s (assumed** peak of producers) needs
  ceil({steady:,} / {per_indexer:,}) = {math.ceil(steady / per_indexer)} indexer(s);
  run {max(2, math.ceil(steady / per_indexer))} for availability.
- Kafka: one consumer per partition at most, and the indexer's convergence relies on
  per-key order only, so **{partitions} partitions** per topic (2x the backfill replicas,
  min. 12) leave room to scale; replication factor 3 and `min.insync.replicas=2` in
  production. During a backfill, raise `refresh_interval` (e.g. 30 s) and drop
  replicas to 0, then restore them.

## 5. Summary for 100M artifacts

| component | size |
|---|---|
| ES primary data | {primary / gb:,.0f} GB ({disk / gb:,.0f} GB disk, {replicas} replica) |
| artifact index | {art_shards} primary shards x {replicas + 1} copies |
| collections / entities | {col_shards} / {ent_shards} primary shards x {replicas + 1} copies |
| search CPU at {qps} q/s | {es_cores} cores |
| query API | {api_replicas} replicas x 1 worker |
| indexer | {indexers} replicas for a {backfill_h} h backfill; {steady_indexers} steady |
| Kafka | {partitions} partitions per entity topic, RF 3 |

{closing}
"""


# ----------------------------------------------------------------------------- all


def write_all(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results, out)
    (out / "RESULTS.md").write_text(results_md(results, images))
    if any(v.get("ceiling") for v in results["scales"].values()):
        (out / "SIZING.md").write_text(sizing_md(results))


def summary(results: dict[str, Any]) -> str:
    lines = [f"\n=== benchmark summary ({results['mode']}, {results['total_s']:.0f} s) ==="]
    for target, scale, measured, verdict in targets(results):
        lines.append(f"[{verdict.replace('*', '')}] {target} @ {scale}: {measured}")
    for name, scale in results["scales"].items():
        rss = scale.get("rss_mib", {})
        lines.append(
            f"{int(name):,}: load {scale.get('load', {}).get('events_per_s', '-')} events/s, "
            f"peak RSS indexer {_fmt(rss.get('indexer'), 0)} MiB, API {_fmt(rss.get('api'), 0)} MiB"
        )
    return "\n".join(lines)
