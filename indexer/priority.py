"""PURE: parents first. When to hold back the artifact partitions during a backlog.

An artifact consumed before its flow run, task run, flow or deployment is written
with missing references and rewritten once they arrive (fan-out). During a
backlog (initial load, replay, catch-up after an outage) each entity topic is
consumed independently, so about half of all artifacts would be written twice or
more. Pausing the artifact partitions while the parent topics have a large lag
lets the parents go first; artifacts then resolve in one write.

This only changes the order of work, never its result: convergence does not
depend on it (docs/propagation.md). The pause is bounded in consecutive batches,
so artifacts are never starved by a parent topic that stays busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def parent_lag(lags: Mapping[str, int], entity_by_topic: Mapping[str, str]) -> int:
    """Total lag (records) of the non-artifact topics, from per-topic lags."""
    return sum(
        max(lag, 0) for topic, lag in lags.items() if entity_by_topic.get(topic) != "artifact"
    )


def hold_artifacts(
    parent_backlog: int, threshold: int, paused_batches: int, max_paused: int
) -> bool:
    """Whether the next batches should skip the artifact partitions.

    `threshold` 0 disables the policy; `paused_batches` counts consecutive
    batches already taken without artifacts, at most `max_paused`.
    """
    return threshold > 0 and parent_backlog > threshold and paused_batches < max_paused


def artifact_partitions(
    assigned: Iterable[tuple[str, int]], entity_by_topic: Mapping[str, str]
) -> list[tuple[str, int]]:
    """The assigned (topic, partition) pairs that carry artifact events."""
    return sorted(tp for tp in assigned if entity_by_topic.get(tp[0]) == "artifact")
