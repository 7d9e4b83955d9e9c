"""PURE: the contract's version rules, folding one entity's events onto its state.

A state is `{"v": version, "d": deleted, "p": part}` (`p` is None when deleted): the last
applied version wins; an upsert or delete applies only with a greater version; a
tombstone deletes a live entity whatever its version and keeps the version, so an older
upsert re-sent after it stays rejected while a newer one brings the entity back.

Redelivery never reaches these rules: records below the stored position of their
partition are skipped before folding (indexer/step.py), so a re-consumed tombstone
cannot delete what a later record re-created (docs/contract.md, "Redelivery").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from services.contract import EntityData, Event

State = dict[str, Any]


def fold_event(
    state: State | None, event: Event, build: Callable[[EntityData, int], Any]
) -> State | None:
    """The state after `event`; the same object when the event changes nothing."""
    if event.op == "tombstone":
        if state is None or state["d"]:
            return state
        return {"v": state["v"], "d": True, "p": None}
    if state is not None and event.version <= state["v"]:
        return state
    if event.op == "delete":
        return {"v": event.version, "d": True, "p": None}
    assert event.data is not None
    return {"v": event.version, "d": False, "p": build(event.data, event.version)}


def fold_events(
    state: State | None, events: Iterable[Event], build: Callable[[EntityData, int], Any]
) -> tuple[State | None, int]:
    """Fold events in partition order: (final state, how many changed the state)."""
    applied = 0
    for event in events:
        new = fold_event(state, event, build)
        if new is not state:
            applied += 1
        state = new
    return state, applied


def live_part(state: State | None) -> Any:
    """The part of a live entity, None when absent or deleted."""
    if state is None or state["d"]:
        return None
    return state["p"]
