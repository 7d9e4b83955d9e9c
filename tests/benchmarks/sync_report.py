"""The pure side of the live-sync part (tests/benchmarks/sync_bench.py): its arithmetic,
the parsing of its children's logs, and its RESULTS.md rows and section
(`results["sync"]`). No servers."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

MET, MISSED, NA = "met", "**missed**", "not evaluated"
TARGET_P99_S = 2.0


def per_thousand(cpu_s: float | None, changes: int) -> float | None:
    """CPU milliseconds per 1,000 changes (None without changes or without a reading)."""
    if cpu_s is None or changes <= 0:
        return None
    return round(cpu_s * 1000 / changes * 1000, 1)


def net_of_idle(cpu_s: float | None, idle_per_s: float | None, window_s: float) -> float | None:
    """CPU seconds of a window minus what the process spends idle over as long (>= 0)."""
    if cpu_s is None or idle_per_s is None:
        return None
    return max(0.0, cpu_s - idle_per_s * window_s)


def backfill_rows_s(log: str) -> float | None:
    """The publishing time backfill-prefect reports (`... in 5.6s; ...`): without the
    interpreter's start."""
    match = re.search(r"\) in ([0-9.]+)s;", log)
    return float(match.group(1)) if match else None


def snapshot_rows_s(log: str) -> float | None:
    """Seconds between the bridge's `snapshot <id> at <lsn>` (the consistent point is
    reached: slot created) and `snapshot published` log lines: reading and publishing the
    rows, without the interpreter's start and the wait for a consistent point."""
    start = end = None
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        msg = str(entry.get("msg", ""))
        if re.match(r"snapshot \S+ at ", msg):
            start = datetime.fromisoformat(entry["ts"])
        elif msg.startswith("snapshot published"):
            end = datetime.fromisoformat(entry["ts"])
    return round((end - start).total_seconds(), 2) if start and end else None


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def sync_targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The issue's target: Prefect commit to searchable p99 <= 2 s (every artifact seen)."""
    s = results.get("sync")
    if not s or (s.get("latency") or {}).get("p99_s") is None:
        return []
    lat = s["latency"]
    ok = lat["p99_s"] <= TARGET_P99_S and not lat["missing_after_drain"]
    return [
        (
            "Prefect commit to searchable p99 <= 2 s (sync-prefect)",
            f"{s['artifacts']:,} in Prefect",
            f"p50 {lat['p50_s']:.2f}s, p99 {lat['p99_s']:.2f}s at "
            f"{_f(lat.get('rate_achieved'), 1)} artifacts/s through Prefect's API"
            + (f", {lat['missing_after_drain']} missing" if lat["missing_after_drain"] else ""),
            MET if ok else MISSED,
        )
    ]


def sync_section(results: dict[str, Any]) -> list[str]:
    """RESULTS.md lines of the live-sync run, if there was one."""
    s = results.get("sync")
    if not s:
        return []
    lines = [
        "",
        "## Live sync from Prefect (sync-prefect, change data capture)",
        "",
        f"`tests/benchmarks/sync_bench.py`, started {s.get('started', '?')}: one Prefect 3.9.1 "
        f"database of {s['artifacts']:,} artifacts (the seeded dataset, loaded by SQL), a real "
        "Prefect server on it, the bridge as its CLI. Small scale; every process on the "
        "same 2 shared CPUs with other work running (load average "
        f"{_loads(s.get('load_avg_start'))} at the start, {_loads(s.get('load_avg_end'))} "
        "at the end).",
    ]
    snap = s.get("snapshot")
    if snap:
        lines += [
            "",
            "Initial snapshot, into Kafka only (process start to snapshot published and "
            "streaming; backfill-prefect: process start to exit; the same database in "
            "the same run, backfill first). The rows phase leaves out the interpreter's "
            "start and, for the bridge, the slot's creation (which waits for the "
            "transactions open on the whole server): the bridge's log lines around its "
            "snapshot, the backfill's own timing. CPU is the whole process's:",
            "",
            "| | events | seconds | events/s | rows phase s | rows phase events/s | CPU s | "
            "CPU ms / 1,000 events |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, label in (("bridge", "sync-prefect snapshot"), ("backfill", "backfill-prefect")):
            r = snap[name]
            lines.append(
                f"| {label} | {_f(r['events'])} | {_f(r['seconds'])} | "
                f"{_f(r['events_per_s'])} | {_f(r.get('rows_s'))} | "
                f"{_f(r.get('rows_events_per_s'))} | {_f(r['cpu_s'])} | "
                f"{_f(r['cpu_ms_per_1000'], 0)} |"
            )
    lat = s.get("latency")
    if lat:
        created = lat.get("from_created") or {}
        call = lat.get("prefect_call") or {}
        kafka = lat.get("to_kafka") or {}
        lines += [
            "",
            "Prefect commit -> searchable: flow runs with five keyed artifacts each, created "
            "through Prefect's REST API (open loop); latency = first answer of POST "
            "/api/artifacts/filter (key `any_`, polled every "
            f"{_f(lat.get('poll_interval_s'))} s) minus the return of Prefect's create call; "
            "'from created' counts from the artifact's `created` instead (before the commit: "
            "an upper bound); 'in Kafka' is the bridge's share: the artifact's event read "
            "from the topic (it can precede the call's return).",
            "",
            "| target/s | achieved/s | seconds | visible | p50 | p95 | p99 | max | "
            "from created p50 / p99 | in Kafka p50 / p99 | Prefect call p50 / p99 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {_f(lat['rate_target'], 0)} | {_f(lat.get('rate_achieved'), 1)} | "
            f"{_f(lat['seconds'], 0)} | {_f(lat['visible'])}/{_f(lat['sent'])} | "
            f"{_f(lat['p50_s'])} s | {_f(lat['p95_s'])} s | {_f(lat['p99_s'])} s | "
            f"{_f(lat['max_s'])} s | {_f(created.get('p50_s'))} / {_f(created.get('p99_s'))} s | "
            f"{_f(kafka.get('p50_s'))} / {_f(kafka.get('p99_s'))} s | "
            f"{_f(call.get('p50_s'))} / {_f(call.get('p99_s'))} s |",
        ]
        for target, scale, measured, verdict in sync_targets(results):
            lines += ["", f"Target {target}: {verdict} ({measured}, {scale})."]
    cost = s.get("cost")
    if cost:
        lines += [
            "",
            f"Costs over that window ({_f(cost['window_s'], 0)} s, {_f(cost['changes'])} "
            "changes published): CPU time from /proc; net = minus the process's idle CPU "
            "rate measured just before; WAL from pg_stat_replication (sent to the bridge) and "
            "pg_current_wal_lsn (written by the whole shared server).",
            "",
            "| bridge CPU ms / 1,000 changes (net) | walsender CPU ms / 1,000 changes | "
            "WAL sent | WAL sent / change | WAL written |",
            "|---|---|---|---|---|",
            f"| {_f(cost['bridge_cpu_ms_per_1000'], 0)} "
            f"({_f(cost.get('bridge_net_cpu_ms_per_1000'), 0)}) | "
            f"{_f(cost['walsender_cpu_ms_per_1000'], 0)} | {_mib(cost['wal_sent_bytes'])} | "
            f"{_f(cost['wal_sent_bytes_per_change'])} B | {_mib(cost['wal_written_bytes'])} |",
        ]
    return lines


def _mib(x: Any) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f} MiB"


def _loads(x: Any) -> str:
    return "?" if not x else ", ".join(f"{v:.2f}" for v in x)
