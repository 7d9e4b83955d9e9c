"""sync-prefect: the slot is confirmed only behind Kafka's acknowledgements; its state file."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.sync.state import SyncState
from services.sync.window import AckWindow

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def test_confirms_the_fully_acknowledged_prefix_only() -> None:
    w = AckWindow()
    w.add(100, T0, 2)
    w.add(200, T0 + timedelta(seconds=1), 0)  # a commit with nothing to publish
    w.add(300, T0 + timedelta(seconds=2), 1)
    assert w.in_flight == 3 and w.oldest_pending() == T0
    w.ack(300)
    assert w.advance() is None  # 100 still waits: 300 cannot be confirmed past it
    w.ack(100)
    assert w.advance() is None
    w.ack(100)
    assert w.advance() == 300 and w.confirmed == 300
    assert w.in_flight == 0 and len(w) == 0 and w.oldest_pending() is None


def test_any_acknowledgement_order_never_confirms_an_unacknowledged_event() -> None:
    rng = random.Random(3)
    for _ in range(200):
        w = AckWindow()
        events = []
        for i in range(1, rng.randint(1, 12)):
            n = rng.randint(0, 3)
            w.add(i * 10, T0, n)
            events += [i * 10] * n
        rng.shuffle(events)
        acked: list[int] = []
        for lsn in events:
            w.ack(lsn)
            acked.append(lsn)
            confirmed = w.advance() or w.confirmed or 0
            # every event at or below the confirmed LSN is acknowledged
            assert all(e in acked for e in events if e <= confirmed)
        w.advance()
        assert w.in_flight == 0 and len(w) == 0


def test_misuse_is_refused() -> None:
    w = AckWindow()
    w.add(100, T0, 1)
    with pytest.raises(ValueError):
        w.add(100, T0, 1)
    w.ack(100)
    with pytest.raises(ValueError):
        w.ack(100)


def test_state_file_round_trips_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert SyncState.load(path) is None
    state = SyncState("slot_a", "7300000000000000001", "prefect")
    state.save(path)
    state.snapshot_complete, state.snapshot_lsn, state.snapshot_rows = True, "0/16B374D8", 42
    state.save(path)
    loaded = SyncState.load(path)
    assert loaded == state
    assert loaded is not None and loaded.same_source("slot_a", "7300000000000000001", "prefect")
    assert not loaded.same_source("slot_a", "other-cluster", "prefect")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
