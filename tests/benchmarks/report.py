"""Turn a benchmark run's raw results into its report (`report-<mode>.md`), sizing model
(`sizing-<mode>.md`) and PNG plots. RESULTS.md and SIZING.md are kept by hand from these
reports and other runs; nothing here writes them."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.benchmarks.procs import REPO_ROOT
from tests.benchmarks.sync_report import sync_section, sync_targets

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
NOT_MEASURED = "not measured in this run"
PREVIOUS = REPO_ROOT / "docs" / "benchmarks" / "results-full-indexer-v1.json"
"""The previous full run (indexer v1), compared with when the results carry no "previous"."""


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


def _dig(d: Any, *keys: str) -> Any:
    """d[k1][k2]..., or None where a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def previous_run(results: dict[str, Any]) -> dict[str, Any] | None:
    """The previous full run to compare with: results["previous"], else PREVIOUS if it exists.

    None when there is none, or when it is the very run being reported (same start time).
    """
    prev = results.get("previous")
    if prev is None and PREVIOUS.exists():
        try:
            prev = json.loads(PREVIOUS.read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(prev, dict) or not isinstance(prev.get("scales"), dict):
        return None
    if prev.get("started") is not None and prev.get("started") == results.get("started"):
        return None
    return prev


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
        r = _num(ceiling.get("indexer_vs_bulk"))
        if r is not None:
            rows.append(
                (
                    "indexer >= 0.7x of raw _bulk",
                    label,
                    f"{_fmt(_dig(scale, 'load', 'events_per_s'), 0)} events/s end-to-end vs "
                    f"{_fmt(ceiling.get('events_per_s_equivalent'), 0)} for the bulk = {r:.2f}x",
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
    rows += alert_targets(results)
    rows += sync_targets(results)
    return rows


def alert_targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The issue's alert target: event to published alert p99 <= 2 s at 1,000 events/s."""
    a = results.get("alerts")
    if not a or a.get("p99_s") is None:
        return []
    at_rate = a["rate_target"] >= 1000 and (a.get("rate_achieved") or 0) >= 950
    ok = a["p99_s"] <= 2 and not a["missing_after_drain"] and at_rate
    return [
        (
            "event to published alert p99 <= 2 s at 1,000 events/s",
            "own stack",
            f"p50 {a['p50_s']:.2f}s, p99 {a['p99_s']:.2f}s at "
            f"{_fmt(a.get('rate_achieved'), 0)} events/s, {a['saved_searches']} saved searches"
            + (f", {a['missing_after_drain']} missing" if a["missing_after_drain"] else ""),
            (MET if ok else MISSED) if a["rate_target"] >= 1000 else NA,
        )
    ]


def alert_section(results: dict[str, Any]) -> list[str]:
    """RESULTS.md lines of the alert-latency run, if there was one."""
    a = results.get("alerts")
    if not a:
        return []
    return [
        "",
        "## Alert latency",
        "",
        "Artifact event produced -> its alert on the alert topic, at a steady rate, on its "
        "own stack (fresh indices: the indexer with its change feed, the alerts worker, "
        "one saved search every probe matches and the others matching nothing; "
        "tests/benchmarks/alert_latency.py).",
        "",
        "| target events/s | sent at | seconds | saved searches | alerted | "
        "p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {a['rate_target']:,} | {_fmt(a.get('rate_achieved'), 0)} | {a['seconds']:.0f} | "
        f"{a['saved_searches']} | {a['alerted']:,}/{a['sent']:,} | {_fmt(a['p50_s'])} s | "
        f"{_fmt(a['p95_s'])} s | {_fmt(a['p99_s'])} s | {_fmt(a['max_s'])} s |",
    ]


# ----------------------------------------------------------------------------- indexer v2 targets

BULK_RATIO = 0.5
FRESH_P99_S = 1.5
PROPAGATION_S = 2.0
RESTART_S = 30.0
RSS_MIB = 1024.0
AT_1M = 1_000_000


def indexer_targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, scale, measured, verdict) rows for the targets of the indexer redesign (v2)."""
    rows: list[tuple[str, str, str, str]] = []
    for name, scale in results["scales"].items():
        n = int(name)
        label = f"{n:,}"
        if not scale.get("load") and not scale.get("ceiling"):
            continue

        def at_1m(ok: bool, n: int = n) -> str:
            verdict = MET if ok else MISSED
            return verdict if n >= AT_1M else f"{NA} (target is at 1M; here {verdict.strip('*')})"

        ceiling = scale.get("ceiling") or {}
        r = _num(ceiling.get("indexer_vs_bulk"))
        if r is None:
            rows.append(
                (f"initial load >= {BULK_RATIO}x raw _bulk, clean stream", label, NOT_MEASURED, NA)
            )
        else:
            rows.append(
                (
                    f"initial load >= {BULK_RATIO}x raw _bulk, clean stream",
                    label,
                    f"{r:.2f}x: {_fmt(_dig(scale, 'load', 'events_per_s'), 0)} events/s "
                    f"end-to-end vs {_fmt(ceiling.get('events_per_s_equivalent'), 0)} for the bulk",
                    MET if r >= BULK_RATIO else MISSED,
                )
            )
        noisy = scale.get("load_noisy") or {}
        r = _num(noisy.get("indexer_vs_bulk"))
        rows.append(
            (
                f"initial load >= {BULK_RATIO}x raw _bulk, noisy stream",
                label,
                NOT_MEASURED
                if r is None
                else f"{r:.2f}x: {_fmt(noisy.get('events'), 0)} events in "
                f"{_fmt(noisy.get('seconds'), 1)} s "
                f"({_fmt(noisy.get('events_per_s'), 0)} events/s)",
                NA if r is None else (MET if r >= BULK_RATIO else MISSED),
            )
        )
        for key, stream in (("load_backlog", "clean"), ("load_noisy_backlog", "noisy")):
            side = scale.get(key) or {}
            r = _num(side.get("indexer_vs_bulk"))
            if r is None:
                continue
            rows.append(
                (
                    f"initial load >= {BULK_RATIO}x raw _bulk, {stream} stream, "
                    "from a backlog (published first)",
                    label,
                    f"{r:.2f}x: {_fmt(side.get('events'), 0)} events in "
                    f"{_fmt(side.get('seconds'), 1)} s from the indexer's start "
                    f"({_fmt(side.get('events_per_s'), 0)} events/s; "
                    f"{_writes(side.get('writes_per_document'))} writes per final document)",
                    MET if r >= BULK_RATIO else MISSED,
                )
            )
        fresh = _dig(scale, "freshness", "1000")
        if fresh:
            p99 = fresh["p99_s"]
            sat = fresh.get("saturated_after_s")
            ok = p99 <= FRESH_P99_S and not fresh.get("not_visible_after_30s") and sat is None
            rows.append(
                (
                    f"freshness p99 <= {FRESH_P99_S} s at 1,000 events/s at 1M",
                    label,
                    f"p99 {p99:.2f} s (p50 {fresh['p50_s']:.2f} s) at "
                    f"{_fmt(fresh.get('rate_achieved'), 0)} events/s"
                    + (f"; saturated after {sat:.0f} s" if sat is not None else ""),
                    at_1m(ok),
                )
            )
        else:
            rows.append(
                (
                    f"freshness p99 <= {FRESH_P99_S} s at 1,000 events/s at 1M",
                    label,
                    NOT_MEASURED,
                    NA,
                )
            )
        prop = _num(_dig(scale, "propagation", "10000", "seconds"))
        rows.append(
            (
                f"one flow run's change reaches 10,000 artifacts <= {PROPAGATION_S:.0f} s",
                label,
                NOT_MEASURED if prop is None else f"{prop:.2f} s",
                NA if prop is None else (MET if prop <= PROPAGATION_S else MISSED),
            )
        )
        restart = scale.get("restart") or {}
        secs = _num(restart.get("restart_to_caught_up_s"))
        if secs is None:
            rows.append(
                (
                    f"restart after SIGKILL at 1M caught up <= {RESTART_S:.0f} s",
                    label,
                    NOT_MEASURED,
                    NA,
                )
            )
        else:
            replayed = bool(restart.get("replayed_from_zero"))
            rows.append(
                (
                    f"restart after SIGKILL at 1M caught up <= {RESTART_S:.0f} s",
                    label,
                    f"{secs:.1f} s to lag 0 (lag at kill {_fmt(restart.get('lag_at_kill'), 0)}); "
                    + ("**replayed from offset 0**" if replayed else "no replay from offset 0"),
                    at_1m(secs <= RESTART_S and not replayed),
                )
            )
        rss = _num(_dig(scale, "rss_mib", "indexer"))
        rows.append(
            (
                "indexer peak RSS <= 1 GiB at 1M",
                label,
                NOT_MEASURED if rss is None else f"{rss:,.0f} MiB",
                NA if rss is None else at_1m(rss <= RSS_MIB),
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
    made += _indexing_plot(results, out, plt)
    return made


def _indexing_plot(results: dict[str, Any], out: Path, plt: Any) -> list[str]:
    """Indexer / raw `_bulk` per scale: previous run, clean, noisy, two replicas."""
    prev = previous_run(results)
    series = (
        ("previous run, clean", "#7f7f7f", lambda s: _dig(s, "ceiling", "indexer_vs_bulk"), True),
        ("clean stream", "#1f77b4", lambda s: _dig(s, "ceiling", "indexer_vs_bulk"), False),
        ("noisy stream", "#ff7f0e", lambda s: _dig(s, "load_noisy", "indexer_vs_bulk"), False),
        (
            "clean, from a backlog",
            "#9467bd",
            lambda s: _dig(s, "load_backlog", "indexer_vs_bulk"),
            False,
        ),
        (
            "2 indexers",
            "#2ca02c",
            lambda s: _dig(s, "load_replicas", "2", "indexer_vs_bulk"),
            False,
        ),
    )
    names = list(results["scales"])
    values: list[tuple[str, str, list[float | None]]] = []
    for title, color, get, from_prev in series:
        vals = [
            _num(get(_dig(prev, "scales", n) if from_prev else results["scales"][n])) for n in names
        ]
        if any(v is not None for v in vals):
            values.append((title, color, vals))
    if len(values) < 2:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(values)
    for i, (title, color, vals) in enumerate(values):
        pos = [x + (i - (len(values) - 1) / 2) * width for x in range(len(names))]
        bars = ax.bar(pos, [v or 0 for v in vals], width, label=title, color=color)
        for bar, v in zip(bars, vals, strict=True):
            if v is not None:
                ax.annotate(
                    f"{v:.2f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.axhline(BULK_RATIO, color="black", linestyle="--", linewidth=0.8, label="target")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{int(n):,} artifacts" for n in names])
    ax.set_ylabel("indexer / raw _bulk (bulk s / indexer s)")
    ax.set_title("Initial load against a raw _bulk of the final documents")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    file = f"indexing-{results['mode']}.png"
    fig.savefig(out / file, dpi=110)
    plt.close(fig)
    return [file]


# ----------------------------------------------------------------------------- indexing section


def _s(x: Any, digits: int = 1) -> str | None:
    v = _num(x)
    return None if v is None else f"{v:,.{digits}f} s"


def _load_cell(ld: Any) -> str | None:
    if _num(_dig(ld, "seconds")) is None:
        return None
    return f"{_s(ld['seconds'])}, {_fmt(ld.get('events_per_s'), 0)} events/s"


def _ratio(x: Any) -> str | None:
    v = _num(x)
    return None if v is None else f"{v:.2f}x"


def _writes(x: Any) -> str | None:
    v = _num(x)
    return None if v is None else f"{v:.2f}"


def _ceiling_cell(s: dict[str, Any]) -> str | None:
    c = s.get("ceiling") or {}
    if _num(c.get("seconds")) is None:
        return None
    return (
        f"{c['seconds']:.2f} s for {_fmt(c.get('documents'), 0)} docs "
        f"({_fmt(c.get('documents_per_s'), 0)} docs/s)"
    )


def _noisy_events(s: dict[str, Any]) -> str | None:
    events = _num(_dig(s, "load_noisy", "events"))
    if events is None:
        return None
    docs = _num(_dig(s, "ceiling", "documents"))
    per = f" ({events / docs:.2f} per final document)" if docs else ""
    return f"{events:,.0f}{per}"


def _speedup(s: dict[str, Any]) -> str | None:
    one = _num(_dig(s, "load_replicas", "1", "events_per_s")) or _num(
        _dig(s, "load", "events_per_s")
    )
    two = _num(_dig(s, "load_replicas", "2", "events_per_s"))
    return f"{two / one:.2f}x" if one and two is not None else None


def _two_cell(s: dict[str, Any]) -> str | None:
    two = _dig(s, "load_replicas", "2")
    cell = _load_cell(two)
    if cell is None:
        return None
    ratio = _ratio(two.get("indexer_vs_bulk"))
    writes = _writes(two.get("writes_per_document"))
    rss = [f"{v:,.0f}" for v in two.get("rss_mib") or () if _num(v) is not None]
    return (
        cell
        + (f"; {ratio} of the bulk" if ratio else "")
        + (f"; {writes} writes per final document" if writes else "")
        + (f"; peak RSS {' and '.join(rss)} MiB" if rss else "")
    )


def _restart_cell(s: dict[str, Any]) -> str | None:
    r = s.get("restart") or {}
    secs = _s(r.get("restart_to_caught_up_s"))
    if secs is None:
        return None
    replay = r.get("replayed_from_zero")
    how = (
        ""
        if replay is None
        else ("; replayed from offset 0" if replay else "; resumed from its state, no replay")
    )
    applied = r.get("records_applied_after_restart")
    return (
        f"{secs} (lag at kill {_fmt(r.get('lag_at_kill'), 0)}, "
        f"{_fmt(r.get('events_after_kill'), 0)} events published before the kill"
        + ("" if applied is None else f", {_fmt(applied, 0)} records applied after the restart")
        + f"{how})"
    )


def _rss_cell(s: dict[str, Any]) -> str | None:
    v = _num(_dig(s, "rss_mib", "indexer"))
    return None if v is None else f"{v:,.0f} MiB"


def _state_cell(s: dict[str, Any]) -> str | None:
    st = s.get("state") or {}
    size = _num(st.get("bytes"))
    if size is None:
        return None
    parts = ", ".join(
        f"{_fmt(st[k], 0)} {k}" for k in ("parents", "artifacts", "collections") if k in st
    )
    return (
        f"{size / 2**20:,.0f} MiB; {_fmt(st.get('entities'), 0)} entities ({parts}); "
        f"**{_fmt(_num(st.get('bytes_per_entity')), 0)} B per entity**"
    )


INDEXING_ROWS: list[tuple[str, Callable[[dict[str, Any]], str | None]]] = [
    (
        "events in the clean stream",
        lambda s: (
            _fmt(_dig(s, "load", "events"), 0) if _dig(s, "load", "events") is not None else None
        ),
    ),
    ("clean stream, 1 indexer: end-to-end", lambda s: _load_cell(s.get("load"))),
    ("raw `_bulk` of the final documents + refresh", _ceiling_cell),
    ("**indexer / raw `_bulk`**", lambda s: _ratio(_dig(s, "ceiling", "indexer_vs_bulk"))),
    ("writes per final document", lambda s: _writes(_dig(s, "load", "writes_per_document"))),
    ("noisy stream: events", _noisy_events),
    ("noisy stream, 1 indexer: end-to-end", lambda s: _load_cell(s.get("load_noisy"))),
    (
        "**noisy stream: indexer / raw `_bulk`**",
        lambda s: _ratio(_dig(s, "load_noisy", "indexer_vs_bulk")),
    ),
    (
        "noisy stream: writes per final document",
        lambda s: _writes(_dig(s, "load_noisy", "writes_per_document")),
    ),
    (
        "clean stream from a backlog (published first): from the indexer's start",
        lambda s: _load_cell(s.get("load_backlog")),
    ),
    (
        "**clean stream from a backlog: indexer / raw `_bulk`**",
        lambda s: _ratio(_dig(s, "load_backlog", "indexer_vs_bulk")),
    ),
    (
        "clean stream from a backlog: writes per final document",
        lambda s: _writes(_dig(s, "load_backlog", "writes_per_document")),
    ),
    (
        "noisy stream from a backlog: from the indexer's start",
        lambda s: _load_cell(s.get("load_noisy_backlog")),
    ),
    (
        "**noisy stream from a backlog: indexer / raw `_bulk`**",
        lambda s: _ratio(_dig(s, "load_noisy_backlog", "indexer_vs_bulk")),
    ),
    ("clean stream, 2 indexers (one group)", _two_cell),
    ("2 indexers / 1 indexer (clean stream)", _speedup),
    ("restart after SIGKILL: restart to lag 0", _restart_cell),
    ("indexer peak RSS", _rss_cell),
    ("indexer state (RocksDB directory after the initial load)", _state_cell),
]


def _indexing_section(results: dict[str, Any]) -> list[str]:
    prev = previous_run(results)
    names = [k for k, v in results["scales"].items() if v.get("load") or v.get("ceiling")]
    lines = ["## Indexing: initial load, restart, memory", ""]
    if prev is None:
        lines += [
            "No previous run to compare with: the results carry no `previous`, and "
            f"`{PREVIOUS.relative_to(REPO_ROOT)}` is missing or is this same run.",
            "",
        ]
    else:
        pm = prev.get("machine", {})
        common = [k for k in names if k in prev["scales"]]
        seeds = (_dig(prev, "options", "seed"), _dig(results, "options", "seed"))
        run = (
            f"*previous run*: {prev.get('started', '?')}, git `{pm.get('git', '?')}`, "
            "the indexer before the redesign (v1)."
        )
        if not common:
            lines += [f"{run} It has no scale in common with this run: no comparison.", ""]
        else:
            lines += [
                f"{run} *this run*: {results['started']}, "
                f"git `{results['machine'].get('git', '?')}`. "
                + (
                    "Same seeded datasets. "
                    if seeds[0] == seeds[1]
                    else f"Different datasets (seed {seeds[0]} and {seeds[1]}). "
                )
                + "Each ratio is against the raw `_bulk` ceiling measured in its own run. "
                "`-`: the previous run did not measure it.",
                "",
            ]
    header = "| |"
    columns: list[tuple[dict[str, Any], bool]] = []  # (scale, from the previous run)
    for name in names:
        old = _dig(prev, "scales", name)
        if isinstance(old, dict):
            header += f" {int(name):,}: previous run |"
            columns.append((old, True))
        header += f" {int(name):,}: this run |"
        columns.append((results["scales"][name], False))
    lines += [header, "|---" * (len(columns) + 1) + "|"]
    for label, get in INDEXING_ROWS:
        cells = []
        for scale, is_prev in columns:
            value = get(scale)
            cells.append(value if value is not None else ("-" if is_prev else NOT_MEASURED))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    compared = []
    for name in names:
        new = _num(_dig(results, "scales", name, "load", "events_per_s"))
        old = _num(_dig(prev, "scales", name, "load", "events_per_s"))
        if new is not None and old:
            compared.append(
                f"- {int(name):,} artifacts: one indexer loads the clean stream at "
                f"{new:,.0f} events/s; the previous run did {old:,.0f} ({new / old:.1f}x)."
            )
    if compared:
        lines += [*compared, ""]
    lines += [
        "### Targets of the indexer redesign",
        "",
        "| target | scale | measured | verdict |",
        "|---|---|---|---|",
    ]
    for target, scale, measured, verdict in indexer_targets(results):
        lines.append(f"| {target} | {scale} | {measured} | {verdict} |")
    lines += [
        "",
        "Targets stated for 1M are *not evaluated* on smaller scales; the verdict in "
        "brackets is indicative only.",
        "",
    ]
    return lines


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
    judged = [row[3] for row in indexer_targets(results) if row[3] in (MET, MISSED)]
    if judged:
        lines += [
            "",
            f"The indexer redesign has its own targets: {judged.count(MET)} of {len(judged)} "
            "evaluated rows met. See *Targets of the indexer redesign* under Indexing.",
        ]
    lines += [
        "",
        "## Datasets",
        "",
        "Seeded `datagen.dataset` datasets (`DatasetScale.for_artifacts(n)`, seed "
        f"{results['options']['seed']}), published as the event stream of "
        "`datagen.events.dataset_records` (the clean stream: one upsert per entity, "
        "deletes as upsert + delete or tombstone)."
        + (
            " The noisy stream carries the same final documents with older snapshots, "
            "duplicates, deletes and re-creations in between."
            if any(v.get("load_noisy") for v in results["scales"].values())
            else ""
        ),
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
    lines += ["", *_indexing_section(results)]
    img = f"indexing-{mode}.png"
    if img in images:
        lines += [f"![indexer / raw bulk]({img})", ""]
    lines += ["## Query latency (sequential, one request at a time)", ""]
    for name, scale in results["scales"].items():
        lat = scale.get("latency", {})
        if not lat:
            continue
        n_meas = {v["a"]["n"] for v in _queries(scale).values()}
        plain = any("p" in v for v in lat.values())
        lines += [
            f"### {int(name):,} artifacts",
            "",
            "(a) this service over HTTP, (b) the same translated request straight to "
            "Elasticsearch, (c) Prefect 3.9.1 over HTTP"
            + (
                ", (p) the service remembering nothing between requests (no page "
                "boundaries, no request cache for searches with hits)"
                if plain
                else ""
            )
            + ". Milliseconds; "
            f"{results['options']['warmup']} warm-up + "
            f"{min(n_meas) if min(n_meas) == max(n_meas) else f'{min(n_meas)}-{max(n_meas)}'} "
            "measured "
            "iterations per query. `join` = the filter reaches a flow run, flow, deployment "
            "or task run (EXISTS sub-queries in Prefect).",
            "",
            "| query | join | (a) p50 | (a) p95 | (b) p50 | (b) p95 | (c) p50 | (c) p95 | a/b | "
            "c/a |" + (" (p) p50 | c/p |" if plain else "") + " answers |",
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if plain else "") + "---|",
        ]
        for q, v in lat.items():
            if "skipped" in v:
                blank = " | |" if plain else ""
                lines.append(f"| {q} | | skipped: {v['skipped']} | | | | | | | |{blank} |")
                continue
            agree = "same" if v["answers_agree"] else f"differ {v['answers']}"
            extra = (
                f" {v['p']['p50']:.2f} | {v['c_over_p']:.1f} |"
                if "p" in v
                else (" | |" if plain else "")
            )
            lines.append(
                f"| {q} | {'yes' if v['join'] else ''} | {v['a']['p50']:.2f} | "
                f"{v['a']['p95']:.2f} | {v['b']['p50']:.2f} | {v['b']['p95']:.2f} | "
                f"{v['c']['p50']:.1f} | {v['c']['p95']:.1f} | {v['a_over_b']:.2f} | "
                f"{v['c_over_a']:.1f} |{extra} {agree} |"
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
    lines += alert_section(results)
    lines += sync_section(results)
    lines += [
        "",
        "## Memory and index size",
        "",
        "| artifacts | indexer peak RSS | API peak RSS | Prefect peak RSS | artifact bytes/doc | "
        "collection bytes/doc | indexer state | state bytes/entity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, scale in results["scales"].items():
        rss = scale.get("rss_mib", {})
        idx = _dig(scale, "ceiling", "indices") or {}
        state = scale.get("state") or {}

        def bpd(alias: str, idx: dict[str, Any] = idx) -> str:
            return _fmt(_dig(idx, alias, "bytes_per_doc"), 0)

        size = _num(state.get("bytes"))
        lines.append(
            f"| {int(name):,} | {_fmt(rss.get('indexer'), 0)} MiB | {_fmt(rss.get('api'), 0)} MiB"
            f" | {_fmt(rss.get('prefect'), 0)} MiB | {bpd('artifacts')} | {bpd('collections')} | "
            + (NOT_MEASURED if size is None else f"{size / 2**20:,.0f} MiB")
            + f" | {_fmt(_num(state.get('bytes_per_entity')), 0)} |"
        )
    profiles = sorted(p.name for p in (REPO_ROOT / "docs" / "benchmarks").glob("profile-*.txt"))
    if profiles:
        lines += ["", "Profiles: " + ", ".join(f"[{p}]({p})" for p in profiles)]
    lines += ["", METHOD]
    return "\n".join(lines) + "\n"


METHOD = """## Method

- **Load.** The dataset's events go to fresh, uniquely named topics (3 partitions)
  with aiokafka (`acks=all`); the indexer runs as its own process
  (`python -m artifact_search.cli indexer`, uniquely prefixed indices, its own consumer
  group). A probe flow event is consumed first, so the consumer group is live when
  the clock starts at the first publish. *End-to-end* stops when the group's
  committed offsets reach the end of every topic **and** the API's `count` and
  `latest/count` equal the dataset's. The *raw `_bulk`* ceiling reads the final
  documents of the indexer's indices back (artifacts and collections; the
  previous indexer also had an entity index; the few `control` documents are left
  out) with a point in time + `search_after` (not timed),
  then bulk-indexes them (1,000 documents per request, 2 in flight, as the
  indexer's defaults) into fresh indices with the same mappings and settings; only
  the bulk requests and the final refresh are timed. *indexer / bulk* is
  bulk seconds / end-to-end seconds (both for the same final documents).
  *Writes per final document*: the indexer's document writes to Elasticsearch
  divided by the final documents (1.0 = each document written once).
- **Noisy stream.** The same final documents, published with older snapshots,
  duplicates, deletes and re-creations in between, to fresh topics and indices,
  loaded by one indexer; its ratio uses the same bulk seconds.
- **Two indexers.** The clean stream, loaded again by two indexer processes of one
  consumer group into fresh topics and indices, against the one-process load above.
- **Restart.** New artifacts are published and the indexer is SIGKILLed at once,
  while it is behind; it is restarted on its state directory and timed from the
  restart until it has caught up. *replayed from offset 0*: it applied more than
  twice the records published before the kill.
- **Indexer state.** Size of the indexer's RocksDB directory after the initial
  load, and the entities it holds (parents, artifacts, collections).
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


TARGET_ARTIFACTS = 100_000_000
REPLICA_COUNTS = (1, 3, 6, 12)
MAX_REPLICAS = 64
PARENT_KINDS = ("flows", "deployments", "flow_runs", "task_runs")


def _sizing_scale(results: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The largest scale with a dataset and a measured artifact index, or None."""
    usable = [
        (k, v)
        for k, v in results["scales"].items()
        if _num(_dig(v, "ceiling", "indices", "artifacts", "bytes_per_doc"))
        and _num(_dig(v, "ceiling", "indices", "artifacts", "docs"))
        and _num(_dig(v, "dataset", "artifacts"))
    ]
    return max(usable, key=lambda kv: int(kv[0])) if usable else None


def _replicas_for(rate: Callable[[int], float], goal: float) -> int | None:
    """The fewest replicas (up to MAX_REPLICAS) whose modelled rate reaches goal."""
    return next((k for k in range(1, MAX_REPLICAS + 1) if rate(k) >= goal), None)


def _storage_section(
    n: int, d: dict[str, Any], idx: dict[str, Any], target: int
) -> tuple[list[str], float, float, float]:
    """Lines of section 1, and artifacts GB, collections GB, docs per artifact."""
    gb = 1e9
    arts = d["artifacts"]
    art_b = idx["artifacts"]["bytes_per_doc"]
    art_docs = idx["artifacts"]["docs"] / arts
    art_total = target * art_docs * art_b
    col_b = _num(_dig(idx, "collections", "bytes_per_doc"))
    col_docs = _num(_dig(idx, "collections", "docs"))
    col_total = target * col_docs / arts * col_b if col_b and col_docs is not None else 0.0
    lines = [
        "## 1. Elasticsearch storage",
        "",
        "Measured on freshly bulk-loaded, force-merged indices (primary store bytes / docs). "
        "The `control` index (one epoch document per Kafka partition) is negligible and "
        "left out.",
        "",
        f"| index | docs at {n:,} | docs per artifact | bytes/doc |",
        "|---|---|---|---|",
        f"| artifacts | {idx['artifacts']['docs']:,} | {art_docs:.3f} | {art_b:,.0f} |",
    ]
    if col_b and col_docs is not None:
        lines.append(f"| collections | {col_docs:,.0f} | {col_docs / arts:.3f} | {col_b:,.0f} |")
    else:
        lines.append(f"| collections | {NOT_MEASURED} | | |")
    lines += [
        "",
        "At 100M artifacts (same proportions as the generator: 1 flow run per 8 artifacts,",
        "1 task run per 3, a key on 70 % of artifacts):",
        "",
        f"- artifacts: 100M x {art_docs:.3f} x {art_b:,.0f} B = **{art_total / gb:,.1f} GB**",
    ]
    if col_total:
        lines.append(
            f"- collections: 100M x {col_docs / arts:.3f} x {col_b:,.0f} B = "
            f"**{col_total / gb:,.1f} GB**"
        )
    return lines, art_total / gb, col_total / gb, art_docs


def _state_section(
    results: dict[str, Any], name: str, target: int
) -> tuple[list[str], Callable[[int], float] | None]:
    """Lines of the indexer-state section, and GB per replica as a function of N (or None)."""
    gb = 1e9
    n, scale = int(name), results["scales"][name]
    d = scale["dataset"]
    arts = d["artifacts"]
    parents_per = sum(int(d.get(k, 0)) for k in PARENT_KINDS) / arts
    cols_per = int(d.get("collections", 0)) / arts
    state = scale.get("state") or {}
    bpe = _num(state.get("bytes_per_entity"))
    rss = [
        f"{_num(_dig(v, 'rss_mib', 'indexer')):,.0f} MiB at {int(k):,}"
        for k, v in sorted(results["scales"].items(), key=lambda kv: int(kv[0]))
        if _num(_dig(v, "rss_mib", "indexer")) is not None
    ]
    rss_lines = (
        [
            "Indexer peak RSS (measured, VmHWM): " + ", ".join(rss) + ". How it grows "
            "beyond the largest scale is not measured.",
            "",
        ]
        if rss
        else []
    )
    lines = ["## 4. Indexer state per replica", ""]
    if bpe is None:
        lines += [f"The size of the indexer's state store: {NOT_MEASURED}.", "", *rss_lines]
        return lines, None

    def per_replica(k: int) -> float:
        return target * bpe * (parents_per + (1 + cols_per) / k) / gb

    parts = ", ".join(
        f"{_fmt(state[k], 0)} {k}" for k in ("parents", "artifacts", "collections") if k in state
    )
    lines += [
        f"Measured after the initial load of {n:,} artifacts by one replica (it holds "
        f"everything): **{_fmt(_num(state.get('bytes')), 0)} bytes** in the RocksDB "
        f"directory for {_fmt(state.get('entities'), 0)} entities ({parts}), i.e. "
        f"**{bpe:,.0f} B per entity** on average.",
        "",
        "Every replica holds all parents (flows, deployments, flow runs, task runs: the "
        "global table of ADR 0006) and 1/N of the artifacts and collections. The dataset "
        f"has {parents_per:.3f} parents and {cols_per:.3f} collections per artifact. "
        "**Assumed:** every kind costs the measured average per entity (parents carry "
        "reverse edges, artifacts carry member records; the split is not measured), and "
        "the size grows linearly with the entity count.",
        "",
        f"Per replica at 100M: 100M x {bpe:,.0f} B x ({parents_per:.3f} + "
        f"(1 + {cols_per:.3f}) / N).",
        "",
        "| replicas N | all parents (each replica) | 1/N of artifacts + collections | "
        "state per replica | volume per replica (x2) | all replicas |",
        "|---|---|---|---|---|---|",
    ]
    for k in REPLICA_COUNTS:
        glob = target * bpe * parents_per / gb
        share = per_replica(k) - glob
        lines.append(
            f"| {k} | {glob:,.1f} GB | {share:,.1f} GB | **{per_replica(k):,.1f} GB** | "
            f"{2 * per_replica(k):,.0f} GB | {k * per_replica(k):,.1f} GB |"
        )
    lines += [
        "",
        "The volume is twice the live state (**assumed**: room for RocksDB compaction and "
        "the write-ahead log). The global table does not shrink with N: at 12 replicas it "
        f"is {parents_per / (parents_per + (1 + cols_per) / 12):.0%} of each replica's state.",
        "",
    ]
    lines += rss_lines
    return lines, per_replica


def _indexing_rate_section(
    results: dict[str, Any],
    name: str,
    target: int,
    state_gb: Callable[[int], float] | None,
) -> tuple[list[str], dict[str, Any]]:
    """Lines of the indexing section, and the figures the summary table needs."""
    n, scale = int(name), results["scales"][name]
    d = scale["dataset"]
    arts = d["artifacts"]
    ld = scale.get("load") or {}
    r1 = _num(ld.get("events_per_s"))
    lines = ["## 5. Indexing throughput and indexer replicas", ""]
    if not r1:
        lines += [f"The initial load: {NOT_MEASURED}.", ""]
        return lines, {}
    parents = sum(int(d.get(k, 0)) for k in PARENT_KINDS)
    share = parents / (parents + arts)
    events_per_artifact = d["events"] / arts

    def model(k: int) -> float:
        return 1 / (share + (1 - share) / k)

    one = _num(_dig(scale, "load_replicas", "1", "events_per_s"))
    two = _num(_dig(scale, "load_replicas", "2", "events_per_s"))
    s2 = two / one if one and two is not None else None
    gain = None if s2 is None else min(max((s2 - 1) / (model(2) - 1), 0.0), 1.0)

    def upper(k: int) -> float:
        return r1 * model(k)

    def lower(k: int) -> float:
        return r1 * (1 + (model(k) - 1) * (gain if gain is not None else 1.0))

    ceiling = scale.get("ceiling") or {}
    bulk_dps = _num(ceiling.get("documents_per_s"))
    noisy = scale.get("load_noisy") or {}
    lines += [
        f"**Measured** at {n:,} artifacts: one indexer replica loads the clean stream at "
        f"**{r1:,.0f} events/s** end-to-end"
        + (
            f" ({_fmt(ld.get('artifacts_per_s'), 0)} artifacts/s)"
            if "artifacts_per_s" in ld
            else ""
        )
        + (f", against {bulk_dps:,.0f} docs/s for a raw `_bulk`" if bulk_dps else "")
        + (
            f"; the noisy stream at {_fmt(noisy.get('events_per_s'), 0)} events/s"
            if noisy.get("events_per_s") is not None
            else ""
        )
        + ".",
    ]
    if s2 is not None:
        lines.append(
            f"In the same run, two replicas of one group loaded it at {two:,.0f} events/s "
            f"against {one:,.0f} for one: **{s2:.2f}x**."
        )
    else:
        lines.append(f"Two replicas side by side: {NOT_MEASURED}.")
    lines += [
        "",
        "**Model (extrapolated).** Every replica applies every parent event (the global "
        "table) and 1/N of the artifact events. With parent events a share p of the stream "
        "and the same cost per event (**assumed**; p from the dataset's entity counts: "
        f"{parents:,} parents / {parents + arts:,} entities = {share:.3f}), N replicas "
        f"reach r1 / (p + (1 - p) / N): at most {1 / share:.1f}x one replica however "
        f"many are added. The model gives {model(2):.2f}x for N = 2.",
    ]
    if gain is not None and s2 is not None and s2 >= model(2):
        lines.append(
            f"The measured {s2:.2f}x reaches the model's {model(2):.2f}x: the *low* column "
            "equals the model."
        )
    elif gain is not None:
        lines.append(
            f"The measured {s2:.2f}x is {gain:.0%} of the model's gain for N = 2 (in this "
            "run both replicas, Kafka and Elasticsearch shared the same CPUs). The *low* "
            "column keeps that fraction of the model's gain for every N."
        )
    else:
        lines.append("Without a two-replica measurement, *low* equals the model.")
    backfill_h = 24
    need = target * events_per_artifact / (backfill_h * 3600)
    steady = 2_000
    lines += [
        "",
        "| replicas N | events/s, model | events/s, low | 100M backfill, low | state per replica |",
        "|---|---|---|---|---|",
    ]
    backfill_events = target * events_per_artifact
    for k in sorted({1, 2, *REPLICA_COUNTS}):
        lo = lower(k)
        lines.append(
            f"| {k}{' (measured)' if k == 1 else ''} | {upper(k):,.0f} | {lo:,.0f} | "
            f"{backfill_events / lo / 3600:,.1f} h | "
            + (f"{state_gb(k):,.1f} GB |" if state_gb else "- |")
        )
    n_up = _replicas_for(upper, need)
    n_lo = _replicas_for(lower, need)
    s_up = _replicas_for(upper, steady)
    s_lo = _replicas_for(lower, steady)

    def count(k: int | None) -> str:
        return f"{k}" if k is not None else f"not reachable with {MAX_REPLICAS}"

    docs_per_event = (
        _num(ceiling.get("documents")) / ld["events"]
        if _num(ceiling.get("documents")) and ld.get("events")
        else None
    )
    wpd = _num(ld.get("writes_per_document"))
    lines += [
        "",
        f"- Initial backfill of 100M artifacts: 100M x {events_per_artifact:.2f} events per "
        f"artifact = {backfill_events / 1e6:,.0f}M events; within **{backfill_h} h "
        f"(assumed)** that is {need:,.0f} events/s: **{count(n_up)}** replica(s) by the "
        f"model, {count(n_lo)} by the low column.",
        f"- Steady state **{steady:,} events/s (assumed** peak of producers): "
        f"{count(s_up)} by the model, {count(s_lo)} by the low column; run at least 2 "
        "for availability.",
    ]
    if noisy.get("events") and ceiling.get("documents"):
        per_doc = noisy["events"] / ceiling["documents"]
        lines.append(
            f"- Topics that are not compacted replay their history: the noisy stream had "
            f"{per_doc:.2f} events per final document and loaded at "
            f"{_fmt(noisy.get('events_per_s'), 0)} events/s with one replica; scale the "
            "backfill's event count by the real history."
        )
    if docs_per_event and bulk_dps:
        written = need * docs_per_event * (wpd or 1.0)
        lines.append(
            f"- Elasticsearch must absorb {need:,.0f} x {docs_per_event:.2f} final documents "
            f"per event x {wpd if wpd else 1.0:.2f} writes per document"
            + ("" if wpd else " (**assumed**: not measured)")
            + f" = {written:,.0f} docs/s, {written / bulk_dps:.2f}x the single-node "
            "bulk rate measured here: scale data nodes with the shard count above."
        )
    restart = scale.get("restart") or {}
    secs = _num(restart.get("restart_to_caught_up_s"))
    if secs is not None:
        lines.append(
            f"- Restart after SIGKILL (measured at {n:,}): caught up {secs:.1f} s after the "
            f"restart, from a lag of {_fmt(restart.get('lag_at_kill'), 0)} events, "
            + (
                "**with** a replay from offset 0."
                if restart.get("replayed_from_zero")
                else "without a replay from offset 0."
            )
            + " A replica resumes from its store, so the catch-up depends on its lag, not on "
            "the index size (design, ADR 0005; not measured at 100M)."
        )
    else:
        lines.append(f"- Restart after SIGKILL: {NOT_MEASURED}.")
    rec = max(2, n_lo if n_lo is not None else (n_up or 2))
    rebuild_events = backfill_events * (share + (1 - share) / rec)
    lines += [
        f"- A replica that loses its volume rebuilds from offset 0: with {rec} replicas it "
        f"applies all parent events and 1/{rec} of the artifact events, about "
        f"{rebuild_events / 1e6:,.0f}M events, {rebuild_events / r1 / 3600:,.1f} h at one "
        "replica's measured rate.",
        f"- Kafka: one consumer per partition at most, so the artifact topic and the member "
        f"topic need at least as many partitions as replicas: **{max(12, 2 * rec)}** "
        f"(2x the {rec} replicas, min. 12). Parent topics are read whole by every replica: "
        "their partition count does not limit scale-out. Replication factor 3 and "
        "`min.insync.replicas=2` in production. During a backfill, raise "
        "`refresh_interval` (e.g. 30 s) and drop Elasticsearch replicas to 0, then "
        "restore them.",
        "",
    ]
    return lines, {
        "rec": rec,
        "need": need,
        "backfill_h": backfill_h,
        "steady": steady,
        "steady_n": max(2, s_lo if s_lo is not None else (s_up or 2)),
        "partitions": max(12, 2 * rec),
    }


def sizing_md(results: dict[str, Any]) -> str:
    picked = _sizing_scale(results)
    if picked is None:
        raise ValueError("no scale with a measured artifact index: nothing to size from")
    name, scale = picked
    n = int(name)
    mode = results["mode"]
    target = TARGET_ARTIFACTS
    storage, art_gb, col_gb, art_docs = _storage_section(
        n, scale["dataset"], scale["ceiling"]["indices"], target
    )
    primary = art_gb + col_gb
    replicas = 1
    disk = primary * (1 + replicas) / 0.75  # stay under the 85 % watermark with margin
    storage += [
        f"- primary total **{primary:,.1f} GB**; with {replicas} replica and 25 % free disk "
        f"headroom: {primary:,.1f} x {1 + replicas} / 0.75 = **{disk:,.0f} GB** of "
        "data-node disk.",
        "",
        "The live indices also carry deleted (superseded) documents between merges "
        "(see `loaded_indices` in the JSON); budget another 10-20 %.",
        "",
    ]
    shard_gb = 30
    storage_shards = max(1, math.ceil(art_gb / shard_gb))
    col_shards = max(1, math.ceil(col_gb / shard_gb))

    # query cost = fixed part + per-document part (per shard), from the shallow queries
    def median_b(sc: dict[str, Any]) -> float:
        vals = [v["b"]["p50"] for k, v in _queries(sc).items() if not _is_deep(k, v)]
        return statistics.median(vals)

    measured = sorted(
        ((int(k), v) for k, v in results["scales"].items() if _queries(v)), key=lambda kv: kv[0]
    )
    docs_total = target * art_docs
    budget_ms = 100.0
    qps = 200
    query: list[str] = ["## 3. Query cost", ""]
    search: dict[str, Any] = {}
    if measured:
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
                "run's 100k and 1M replace it with a fitted value): about what a top-k sort "
                "over doc values costs per matching document on one core. Charging it for "
                "every document makes this an upper bound: selective filters touch far fewer"
            )
        latency_shards = math.ceil(docs_total * per_doc_ms / max(budget_ms - fixed_ms, 1.0))
        art_shards = max(storage_shards, latency_shards)
        docs_per_shard = docs_total / art_shards
        es_ms_100m = fixed_ms + per_doc_ms * docs_per_shard
        core_ms_per_query = art_shards * fixed_ms + per_doc_ms * docs_total
        es_core_s = qps * core_ms_per_query / 1000
        es_cores = math.ceil(es_core_s / 0.6)
        shallow = [v for k, v in _queries(scale).items() if not _is_deep(k, v)] or [
            v for k, v in _queries(measured[-1][1]).items() if not _is_deep(k, v)
        ]
        a_minus_b = statistics.median(max(v["a"]["p50"] - v["b"]["p50"], 0) for v in shallow)
        api_rps_core = 1000 / a_minus_b if a_minus_b > 0 else float("inf")
        api_replicas = max(2, math.ceil(qps / (api_rps_core * 0.6)))
        search = {"cores": es_cores, "api": api_replicas}
        query += [
            "Raw Elasticsearch time (b) per request = fixed + per-document part, per shard",
            "(the deep-offset walk is left out: see RESULTS.md):",
            "",
            f"- fixed: median (b) p50 of the mix at {measured[0][0]:,} artifacts = "
            f"**{fixed_ms:.2f} ms** (parse, filters on small postings, fetch 50 hits, network);",
            f"- per document: **{per_doc_ms * 1e6:,.1f} ns**, {per_doc_src}.",
            "",
            f"For a p50 budget of **{budget_ms:.0f} ms (assumed)** per shard (shards run in "
            f"parallel): ceil({docs_total / 1e6:,.0f}M x {per_doc_ms * 1e6:,.1f} ns / "
            f"({budget_ms:.0f} - {fixed_ms:.2f}) ms) = {latency_shards} shards; with "
            f"{art_shards} shards a query costs {fixed_ms:.2f} + {per_doc_ms * 1e6:,.1f} ns x "
            f"{docs_per_shard / 1e6:,.1f}M = **{es_ms_100m:,.1f} ms** per shard, and "
            f"{art_shards} x {fixed_ms:.2f} ms + {per_doc_ms * 1e6:,.1f} ns x "
            f"{docs_total / 1e6:,.0f}M = {core_ms_per_query:,.0f} core-ms in total.",
            "",
            f"CPU for **{qps} queries/s (assumed peak)**: {qps} x {core_ms_per_query:,.0f} ms = "
            f"{es_core_s:,.1f} core-seconds per second; at 60 % utilisation **{es_cores} "
            f"search cores** across the data nodes (e.g. {max(2, math.ceil(es_cores / 8))} "
            "data nodes of 8 vCPU, plus replicas for HA), with RAM for the page cache to hold "
            "the filtered fields' doc values and postings (about the artifact index size, "
            f"{art_gb:,.0f} GB, across the nodes).",
            "",
            f"The service adds (a) - (b) = **{a_minus_b:.2f} ms** per request (median over "
            "the mix: HTTP, validation, translation, JSON), i.e. about "
            f"{api_rps_core:,.0f} requests/s per fully-used core. For {qps} queries/s at "
            f"60 % utilisation: max(2, ceil({qps} / ({api_rps_core:,.0f} x 0.6))) = "
            f"**{api_replicas} API replicas** (1 uvicorn worker each, 1 vCPU; at least 2 for "
            "availability).",
            "",
        ]
        shard_note = f"the latency model below needs {latency_shards}"
    else:
        art_shards = storage_shards
        docs_per_shard = docs_total / art_shards
        query += [f"Query latency: {NOT_MEASURED}; shards are sized by storage only.", ""]
        shard_note = "query latency was not measured"
    shards = [
        "## 2. Shards and replicas",
        "",
        f"Shard size target **{shard_gb} GB (assumed**, Elastic's 10-50 GB guidance for "
        f"search): storage alone needs ceil({art_gb:,.1f} / {shard_gb}) = {storage_shards} "
        f"artifact shards; {shard_note}; so **{art_shards} primary shards** for artifacts "
        f"({docs_per_shard / 1e6:,.1f}M docs per shard, far below Lucene's 2^31 limit); "
        f"collections ceil({col_gb:,.1f} / {shard_gb}) = **{col_shards}**; **{replicas} "
        "replica** each for availability (add replicas, not shards, for query throughput). "
        "Round artifact shards up to a multiple of the data-node count.",
        "",
    ]
    state, state_gb = _state_section(results, name, target)
    indexing, idx_fig = _indexing_rate_section(results, name, target, state_gb)

    rows = [
        f"| ES primary data | {primary:,.0f} GB ({disk:,.0f} GB disk, {replicas} replica) |",
        f"| artifact index | {art_shards} primary shards x {replicas + 1} copies |",
        f"| collections index | {col_shards} primary shards x {replicas + 1} copies |",
    ]
    if search:
        rows += [
            f"| search CPU at {qps} q/s | {search['cores']} cores |",
            f"| query API | {search['api']} replicas x 1 worker |",
        ]
    if idx_fig:
        rec = idx_fig["rec"]
        rows.append(
            f"| indexer | {rec} replicas ({idx_fig['need']:,.0f} events/s for a "
            f"{idx_fig['backfill_h']} h backfill); {idx_fig['steady_n']} for "
            f"{idx_fig['steady']:,} events/s steady |"
        )
        if state_gb:
            rows.append(
                f"| indexer state | {state_gb(rec):,.1f} GB per replica at {rec} replicas "
                f"(volume {2 * state_gb(rec):,.0f} GB) |"
            )
        else:
            rows.append(f"| indexer state | {NOT_MEASURED} |")
        rows.append(
            f"| Kafka | {idx_fig['partitions']} partitions for the artifact and member "
            "topics, RF 3 |"
        )
    closing = (
        "Re-derive with the full run (`make bench`, 100k and 1M): the 1M numbers replace "
        "these, and the growth factor from 100k to 1M shows whether query cost is really "
        "linear in shard size (the bound used above)."
        if mode == "quick"
        else "The per-document query cost above is fitted between the scales of this run; "
        "rerun `make bench` on the production hardware class and this file follows."
    )
    head = [
        "# Sizing for 100 million artifacts",
        "",
        f"Derived from the measurements of the **{n:,}-artifact** scale of the `{mode}` run "
        f"([report-{mode}.md](report-{mode}.md), [results-{mode}.json](results-{mode}.json)); "
        "`python -m tests.benchmarks.run` writes this file again from the largest scale it "
        "ran. All inputs were measured on one small machine shared by every process of the "
        "benchmark, so per-core figures are conservative. Assumptions are marked "
        "**(assumed)** and model outputs *extrapolated*; everything else is measured. "
        "Change an assumption and redo the arithmetic below.",
        "",
    ]
    return (
        "\n".join(
            [
                *head,
                *storage,
                *shards,
                *query,
                *state,
                *indexing,
                "## 6. Summary for 100M artifacts",
                "",
                "| component | size |",
                "|---|---|",
                *rows,
                "",
                closing,
            ]
        )
        + "\n"
    )


# ----------------------------------------------------------------------------- all


def report_paths(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Where a run's generated report and sizing model go: ``report-<mode>.md`` and
    ``sizing-<mode>.md`` beside its ``results-<mode>.json``. Never ``RESULTS.md`` or
    ``SIZING.md``: those are the kept record, written by hand from the generated reports
    and other runs, which a new run must not overwrite."""
    mode = results["mode"]
    return out / f"report-{mode}.md", out / f"sizing-{mode}.md"


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Write the run's report, its sizing model (when a scale has what it needs) and its
    plots into `out`; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results, out)
    report_md, sizing = report_paths(results, out)
    report_md.write_text(results_md(results, images))
    written = [report_md, *(out / image for image in images)]
    if _sizing_scale(results) is not None:
        sizing.write_text(sizing_md(results))
        written.append(sizing)
    return written


def summary(results: dict[str, Any]) -> str:
    lines = [f"\n=== benchmark summary ({results['mode']}, {results['total_s']:.0f} s) ==="]
    for target, scale, measured, verdict in targets(results):
        lines.append(f"[{verdict.replace('*', '')}] {target} @ {scale}: {measured}")
    for target, scale, measured, verdict in indexer_targets(results):
        if measured != NOT_MEASURED:
            lines.append(
                f"[{verdict.replace('*', '')}] indexer redesign: {target} @ {scale}: {measured}"
            )
    for name, scale in results["scales"].items():
        rss = scale.get("rss_mib", {})
        extra = [
            f"{label} {value}"
            for label, value in (
                ("noisy", _load_cell(scale.get("load_noisy"))),
                ("2 indexers", _load_cell(_dig(scale, "load_replicas", "2"))),
                ("restart", _s(_dig(scale, "restart", "restart_to_caught_up_s"))),
                (
                    "state",
                    _fmt(_num(_dig(scale, "state", "bytes_per_entity")), 0) + " B/entity"
                    if _dig(scale, "state", "bytes_per_entity") is not None
                    else None,
                ),
            )
            if value is not None
        ]
        lines.append(
            f"{int(name):,}: load {_fmt(_dig(scale, 'load', 'events_per_s'), 0)} events/s, "
            f"peak RSS indexer {_fmt(rss.get('indexer'), 0)} MiB, API {_fmt(rss.get('api'), 0)} MiB"
            + ("; " + ", ".join(extra) if extra else "")
        )
    return "\n".join(lines)
