"""The benchmark report renders old (indexer v1) and new (indexer v2) results without servers."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks import report

OLD = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "results-full-indexer-v1.json"


def _old() -> dict[str, Any]:
    return json.loads(OLD.read_text())


def new_format(old: dict[str, Any], name: str = "100000") -> dict[str, Any]:
    """One scale of the old results, reshaped as the v2 runner writes it, plausible numbers."""
    res = copy.deepcopy(old)
    res["started"] = "2026-12-01 10:00:00 UTC"
    res["machine"]["git"] = "abcdef0"
    scale = res["scales"][name]
    res["scales"] = {name: scale}
    ceiling = scale["ceiling"]
    ceiling["indices"].pop("entities")
    ceiling["indices"]["control"] = {"docs": 6, "store_bytes": 9000, "bytes_per_doc": 1500.0}
    ceiling["loaded_indices"] = {
        k: v for k, v in ceiling["loaded_indices"].items() if "entities" not in k
    }
    docs = sum(ceiling["indices"][k]["docs"] for k in ("artifacts", "collections"))
    ceiling["documents"] = docs
    ceiling["documents_per_s"] = round(docs / ceiling["seconds"])
    k = scale["artifacts"] / 100_000  # seconds grow with the scale
    load = scale["load"]
    load["seconds"] = 9.0 * k
    load["events_per_s"] = round(load["events"] / load["seconds"])
    load["writes_per_document"] = 1.02
    ceiling["indexer_vs_bulk"] = round(ceiling["seconds"] / load["seconds"], 3)
    ceiling["events_per_s_equivalent"] = round(load["events"] / ceiling["seconds"])
    noisy_events = round(docs * 1.8)
    scale["load_noisy"] = {
        "events": noisy_events,
        "seconds": 14.0 * k,
        "events_per_s": round(noisy_events / (14.0 * k)),
        "indexer_vs_bulk": round(ceiling["seconds"] / (14.0 * k), 3),
        "replicas": 1,
        "writes_per_document": None,
        "rss_mib": [190.5],
    }
    for key, events, seconds in (
        ("load_backlog", load["events"], 8.0 * k),
        ("load_noisy_backlog", noisy_events, 12.0 * k),
    ):
        scale[key] = {
            "events": events,
            "seconds": seconds,
            "events_per_s": round(events / seconds),
            "indexer_vs_bulk": round(ceiling["seconds"] / seconds, 3),
            "replicas": 1,
            "backlog": True,
            "writes_per_document": 1.05,
            "rss_mib": [180.0],
        }
    scale["load_replicas"] = {
        "1": {"seconds": load["seconds"], "events_per_s": load["events_per_s"]},
        "2": {
            "events": load["events"],
            "replicas": 2,
            "seconds": 6.1 * k,
            "events_per_s": round(load["events"] / (6.1 * k)),
            "writes_per_document": 1.04,
            "rss_mib": [150.2, 149.8],
            "indexer_vs_bulk": round(ceiling["seconds"] / (6.1 * k), 3),
        },
    }
    scale["restart"] = {
        "events_after_kill": 80_000,
        "lag_at_kill": 61_234,
        "restart_to_caught_up_s": 4.2,
        "records_applied_after_restart": 80_000,
        "replayed_from_zero": False,
    }
    d = scale["dataset"]
    parents = d["flows"] + d["deployments"] + d["flow_runs"] + d["task_runs"]
    entities = parents + d["artifacts"] + d["collections"]
    scale["state"] = {
        "bytes": entities * 366,
        "parents": parents,
        "artifacts": d["artifacts"],
        "collections": d["collections"],
        "entities": entities,
        "bytes_per_entity": 366.0,
    }
    scale["freshness"]["1000"]["p99_s"] = 1.2
    scale["propagation"]["10000"]["seconds"] = 1.4
    return res


def test_old_results_still_render(tmp_path: Path) -> None:
    old = _old()
    report.write_all(old, tmp_path)
    text, sizing = (path.read_text() for path in report.report_paths(old, tmp_path))
    assert report.NOT_MEASURED in text
    assert "entity bytes/doc" not in text
    assert "| entities" not in sizing and "entity bytes" not in sizing
    assert "not measured in this run" in sizing
    assert "No previous run to compare with" in text  # the v1 file is this very run
    assert report.summary(old)


@pytest.mark.parametrize("embedded", [False, True])
def test_new_results_render_beside_previous(tmp_path: Path, embedded: bool) -> None:
    old = _old()
    new = new_format(old)
    if embedded:
        new["previous"] = old
    report.write_all(new, tmp_path)
    text, sizing = (path.read_text() for path in report.report_paths(new, tmp_path))
    assert "| 100,000: previous run | 100,000: this run |" in text
    assert "1,000,000: previous run" not in text  # only scales this run measured
    assert "0.08x" in text  # the previous run's own ratio
    assert "no replay from offset 0" in text
    assert "### Targets of the indexer redesign" in text
    assert "noisy stream" in text
    table = text.split("### Targets of the indexer redesign")[0]
    assert "| **noisy stream: indexer / raw `_bulk`** | - | 0.42x |" in table
    assert "| 2 indexers / 1 indexer (clean stream) | - | 1.48x |" in table
    bulk_s = new["scales"]["100000"]["ceiling"]["seconds"]  # loads: 8 s and 12 s at 100k
    clean, noisy = f"{bulk_s / 8.0:.2f}x", f"{bulk_s / 12.0:.2f}x"
    assert f"| **clean stream from a backlog: indexer / raw `_bulk`** | - | {clean} |" in table
    assert f"| **noisy stream from a backlog: indexer / raw `_bulk`** | - | {noisy} |" in table
    targets = text.split("### Targets of the indexer redesign")[1]
    assert f"clean stream, from a backlog (published first) | 100,000 | {clean}" in targets
    assert "peak RSS 150 and 150 MiB" in table
    assert "366 B per entity" in table
    # only the noisy load's writes per document is None in the synthetic results
    assert table.count(report.NOT_MEASURED) == 1
    assert "indexing-full.png" in text and (tmp_path / "indexing-full.png").exists()
    for k in (1, 3, 6, 12):
        assert f"\n| {k} | " in sizing or f"\n| {k} (measured) | " in sizing
    assert "entities index" not in sizing
    assert "two replicas of one group loaded it at" in sizing
    assert report.summary(new)


def test_indexer_targets_verdicts() -> None:
    new = new_format(_old())
    scale = new["scales"].pop("100000")
    new["scales"]["1000000"] = scale
    rows = {row[0]: row for row in report.indexer_targets(new)}
    assert rows["initial load >= 0.5x raw _bulk, clean stream"][3] == report.MET
    assert rows["initial load >= 0.5x raw _bulk, noisy stream"][3] == report.MISSED
    assert rows["freshness p99 <= 1.5 s at 1,000 events/s at 1M"][3] == report.MET
    assert rows["one flow run's change reaches 10,000 artifacts <= 2 s"][3] == report.MET
    assert rows["restart after SIGKILL at 1M caught up <= 30 s"][3] == report.MET
    assert rows["indexer peak RSS <= 1 GiB at 1M"][3] == report.MET
    scale["restart"]["replayed_from_zero"] = True
    rows = {row[0]: row for row in report.indexer_targets(new)}
    assert rows["restart after SIGKILL at 1M caught up <= 30 s"][3] == report.MISSED


def test_missing_kinds_and_sections(tmp_path: Path) -> None:
    new = new_format(_old())
    scale = new["scales"]["100000"]
    del scale["ceiling"]["indices"]["collections"]
    for key in ("load_noisy", "load_backlog", "load_noisy_backlog", "load_replicas", "restart"):
        del scale[key]
    report.write_all(new, tmp_path)
    for path in report.report_paths(new, tmp_path):
        assert report.NOT_MEASURED in path.read_text()


def test_a_run_never_overwrites_the_kept_record(tmp_path: Path) -> None:
    """RESULTS.md and SIZING.md are written by hand from many runs: a new run (or
    `--report`) writes its own report, sizing model and plots beside them and leaves them
    as they were."""
    kept = {name: f"# {name}: measured by hand, kept\n" for name in ("RESULTS.md", "SIZING.md")}
    for name, text in kept.items():
        (tmp_path / name).write_text(text)
    new = new_format(_old())
    written = report.write_all(new, tmp_path)
    assert {path.read_text() for path in tmp_path.glob("*.md") if path.name in kept} == set(
        kept.values()
    )
    assert [path.name for path in written if path.suffix == ".md"] == [
        f"report-{new['mode']}.md",
        f"sizing-{new['mode']}.md",
    ]
    assert all(path.exists() and path.parent == tmp_path for path in written)
    assert f"[report-{new['mode']}.md](report-{new['mode']}.md)" in written[-1].read_text()


def test_alert_latency_target_and_section() -> None:
    from tests.benchmarks.report import MET, MISSED, NA, alert_section, alert_targets

    run = {
        "rate_target": 1000,
        "rate_achieved": 998.0,
        "seconds": 60.0,
        "saved_searches": 20,
        "sent": 60_000,
        "alerted": 60_000,
        "missing_after_drain": 0,
        "p50_s": 0.9,
        "p95_s": 1.5,
        "p99_s": 1.8,
        "max_s": 2.4,
    }
    assert alert_targets({"scales": {}, "alerts": run})[0][3] == MET
    slow = {**run, "p99_s": 2.5}
    assert alert_targets({"scales": {}, "alerts": slow})[0][3] == MISSED
    lossy = {**run, "alerted": 59_990, "missing_after_drain": 10}
    assert alert_targets({"scales": {}, "alerts": lossy})[0][3] == MISSED
    tiny = {**run, "rate_target": 100, "rate_achieved": 100.0}
    assert alert_targets({"scales": {}, "alerts": tiny})[0][3] == NA
    assert alert_targets({"scales": {}}) == [] and alert_section({"scales": {}}) == []
    lines = alert_section({"alerts": run})
    assert "## Alert latency" in lines and any("| 1.80 s |" in line for line in lines)


def _sync_run() -> dict[str, Any]:
    """The shape tests/benchmarks/sync_bench.py writes, plausible numbers."""
    rates = {
        "events": 29_516,
        "seconds": 8.2,
        "events_per_s": 3_600,
        "rows_s": 5.6,
        "rows_events_per_s": 5_271,
        "cpu_s": 5.1,
    }
    return {
        "artifacts": 20_000,
        "started": "2026-11-30 21:53:45 UTC",
        "load_avg_start": [2.5, 2.6, 3.0],
        "load_avg_end": [3.7, 2.7, 3.5],
        "snapshot": {
            "bridge": {**rates, "cpu_ms_per_1000": 174.1},
            "backfill": {**rates, "seconds": 9.8, "events_per_s": 3_014, "cpu_ms_per_1000": 174.5},
            "bridge_over_backfill": 1.2,
        },
        "latency": {
            "rate_target": 20.0,
            "rate_achieved": 14.6,
            "seconds": 30.0,
            "sent": 600,
            "visible": 600,
            "missing_after_drain": 0,
            "p50_s": 0.755,
            "p95_s": 1.443,
            "p99_s": 1.678,
            "max_s": 1.755,
            "from_created": {"p50_s": 1.46, "p99_s": 2.41},
            "prefect_call": {"p50_s": 1.762, "p99_s": 3.464},
            "to_kafka": {"p50_s": 0.031, "p99_s": 0.412},
            "poll_interval_s": 0.05,
        },
        "cost": {
            "window_s": 43.4,
            "changes": 840,
            "bridge_cpu_s": 0.84,
            "bridge_cpu_ms_per_1000": 1000.0,
            "bridge_net_cpu_ms_per_1000": 700.0,
            "walsender_cpu_ms_per_1000": 142.9,
            "wal_sent_bytes": 6_091_752,
            "wal_sent_bytes_per_change": 7_252,
            "wal_written_bytes": 6_091_752,
        },
    }


def test_sync_costs_per_thousand_changes() -> None:
    from tests.benchmarks.sync_report import net_of_idle, per_thousand

    assert per_thousand(0.84, 840) == 1000.0
    assert per_thousand(0.5, 0) is None and per_thousand(None, 10) is None
    assert net_of_idle(0.84, 0.004, 40.0) == pytest.approx(0.68)
    assert net_of_idle(0.1, 0.01, 40.0) == 0.0  # never below zero
    assert net_of_idle(None, 0.01, 40.0) is None and net_of_idle(0.1, None, 40.0) is None


def test_sync_target_and_section() -> None:
    from tests.benchmarks.sync_report import MET, MISSED, sync_section, sync_targets

    run = _sync_run()
    assert sync_targets({"scales": {}, "sync": run})[0][3] == MET
    slow = copy.deepcopy(run)
    slow["latency"]["p99_s"] = 2.4
    assert sync_targets({"scales": {}, "sync": slow})[0][3] == MISSED
    lossy = copy.deepcopy(run)
    lossy["latency"].update(visible=590, missing_after_drain=10)
    row = sync_targets({"scales": {}, "sync": lossy})[0]
    assert row[3] == MISSED and "10 missing" in row[2]
    assert sync_targets({"scales": {}}) == [] and sync_section({"scales": {}}) == []
    assert sync_targets({"sync": {**run, "latency": None}}) == []
    lines = sync_section({"sync": run})
    text = "\n".join(lines)
    assert "## Live sync from Prefect" in text and "2 shared CPUs" in text
    assert "| sync-prefect snapshot | 29,516 | 8.20 | 3,600 | 5.60 | 5,271 | 5.10 | 174 |" in text
    assert "| backfill-prefect | 29,516 | 9.80 | 3,014 |" in text
    assert "| 0.76 s | 1.44 s | 1.68 s |" in text and "600/600" in text
    assert "| 0.03 / 0.41 s | 1.76 / 3.46 s |" in text
    assert "Target Prefect commit to searchable p99 <= 2 s (sync-prefect): met (p50" in text
    assert "| 1,000 (700) | 143 | 5.8 MiB | 7,252 B |" in text


def test_results_md_has_the_sync_section() -> None:
    res = new_format(_old())
    res["sync"] = _sync_run()
    text = report.results_md(res, [])
    assert "## Live sync from Prefect" in text
    assert "Prefect commit to searchable p99 <= 2 s" in text


def test_snapshot_and_backfill_times_from_their_logs() -> None:
    from tests.benchmarks.sync_report import backfill_rows_s, snapshot_rows_s

    bridge = "\n".join(
        [
            '{"msg": "created replication slot s at 0/A0", "ts": "2026-11-30T22:01:51.2+00:00"}',
            '{"msg": "snapshot 00000006-1 at 0/A0D8", "ts": "2026-11-30T22:01:51.25+00:00"}',
            "snapshot [####] 100.0% 29,516/29,516 events  3,802 events/s  artifact",
            '{"msg": "snapshot published: 29516 rows", "ts": "2026-11-30T22:01:59.08+00:00"}',
        ]
    )
    assert snapshot_rows_s(bridge) == 7.83
    assert snapshot_rows_s("no snapshot here") is None
    backfill = "published 29516 events (flow 200, artifact 20000) in 5.6s; 29516 in total"
    assert backfill_rows_s(backfill) == 5.6 and backfill_rows_s("") is None
