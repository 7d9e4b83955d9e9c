"""Parents first: the pure decision of when to hold back artifact partitions."""

from __future__ import annotations

from indexer.priority import artifact_partitions, hold_artifacts, parent_lag

TOPICS = {
    "p.flows": "flow",
    "p.deployments": "deployment",
    "p.flow-runs": "flow_run",
    "p.task-runs": "task_run",
    "p.artifacts": "artifact",
}


def test_parent_lag_counts_every_topic_but_the_artifacts() -> None:
    lags = {"p.flows": 10, "p.flow-runs": 300, "p.artifacts": 99_999, "p.task-runs": -5}
    assert parent_lag(lags, TOPICS) == 310


def test_hold_only_above_the_threshold() -> None:
    assert hold_artifacts(5_001, 5_000, 0, 50)
    assert not hold_artifacts(5_000, 5_000, 0, 50)
    assert not hold_artifacts(0, 5_000, 0, 50)


def test_zero_threshold_disables_the_policy() -> None:
    assert not hold_artifacts(10**9, 0, 0, 50)


def test_hold_is_bounded_in_consecutive_batches() -> None:
    held = 0
    decisions = []
    for _ in range(7):
        hold = hold_artifacts(10**6, 5_000, held, 3)
        decisions.append(hold)
        held = held + 1 if hold else 0
    assert decisions == [True, True, True, False, True, True, True]


def test_artifact_partitions_are_selected_by_topic_entity() -> None:
    assigned = [("p.flows", 0), ("p.artifacts", 2), ("p.artifacts", 0), ("other", 1)]
    assert artifact_partitions(assigned, TOPICS) == [("p.artifacts", 0), ("p.artifacts", 2)]
