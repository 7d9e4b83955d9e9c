"""The indexer's state machine over in-memory fakes: folding, joins, collections, ownership.

Every test runs the real processor (indexer/runtime.py and the pure step) on a
`MemoryStore` with a fake Elasticsearch that honours external versions; the expected
documents come from `indexer_oracle`, a brute-force recomputation from final snapshots.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import MOVING, NONE, dataset_records
from indexer import keys
from indexer.collections import Member
from indexer.fold import fold_event
from indexer.local import LocalRecord
from indexer.runtime import PipelineError
from indexer.store import MemoryStore
from services.contract import encode_event, parse_record
from services.documents import collection_id
from services.errors import PermanentError
from tests.unit.indexer_fakes import (
    KAFKA,
    FakeEpochs,
    FakeIndex,
    Replica,
    member_records,
    number,
)
from tests.unit.indexer_oracle import comparable, expected_documents

TS = "2024-01-01T00:00:00Z"


def uid() -> str:
    return str(uuid.uuid4())


def rec(entity: str, entity_id: str, version: int, **data: Any) -> tuple[str, bytes, bytes]:
    body = {"id": entity_id, "created": TS, "updated": TS, **data}
    return (entity, entity_id.encode(), encode_event(entity, entity_id, "upsert", version, body))


def tomb(entity: str, entity_id: str) -> tuple[str, bytes, None]:
    return (entity, entity_id.encode(), None)


def at(offset: int, item: tuple[str, bytes, bytes | None]) -> LocalRecord:
    """`item` as the record at `offset` of its partition."""
    first = number([item])[0]
    return LocalRecord(first.topic, first.partition, offset, item[1], item[2])


def replica(**kw: Any) -> Replica:
    r = Replica(FakeIndex(), FakeEpochs(), **kw)
    r.own_all()
    return r


# -- keys and folding ------------------------------------------------------------------------
def test_position_keys_round_trip_any_partition() -> None:
    for partition in (0, 1, 255, 256, 65_535, 2**31 - 1):
        key = keys.position("prefix.prefect.artifacts", partition)
        assert keys.split_position(key) == ("prefix.prefect.artifacts", partition)
    art = uid()
    assert keys.split_tail(keys.artifact_edge(b"f", uid(), 513, art)) == (513, art)


def test_ranked_keys_sort_by_created_then_id_across_the_epoch() -> None:
    cid = uid()
    values = [(-62_135_596_800_000_000, "b"), (-1, "a"), (0, "a"), (253_402_300_799_999_999, "a")]
    ranked = [keys.ranked(0, cid, c, str(uuid.UUID(int=ord(i)))) for c, i in values]
    assert ranked == sorted(ranked)


def test_fold_last_version_wins_and_tombstones_keep_the_version() -> None:
    fid = uid()

    def ev(version: int, state: str) -> Any:
        return parse_record(*rec("flow_run", fid, version, name="r", flow_id=fid, state_type=state))

    def build(data: Any, version: int) -> Any:
        return data.state_type

    state = fold_event(None, ev(5, "RUNNING"), build)
    assert state == {"v": 5, "d": False, "p": "RUNNING"}
    assert fold_event(state, ev(3, "FAILED"), build) is state
    assert fold_event(state, ev(5, "FAILED"), build) is state
    gone = fold_event(state, parse_record("flow_run", fid.encode(), None), build)
    assert gone == {"v": 5, "d": True, "p": None}
    assert fold_event(gone, ev(4, "FAILED"), build) is gone
    assert fold_event(gone, ev(6, "FAILED"), build) == {"v": 6, "d": False, "p": "FAILED"}


# -- redelivery ------------------------------------------------------------------------------
async def test_redelivered_tombstone_then_recreate_leaves_the_entity_alive() -> None:
    """Defect 1: stored v5; one batch [tombstone, upsert v6]; the same records consumed
    again (a retry, a rebalance, a restart with other batch boundaries): still alive at v6.
    A tombstone sent anew (a new offset) deletes."""
    r = replica()
    art = uid()
    first = number([rec("artifact", art, 5, key="k", type="a")])
    second = number(
        [
            rec("artifact", art, 5, key="k", type="a"),
            tomb("artifact", art),
            rec("artifact", art, 6, key="k", type="b"),
        ]
    )[1:]
    await r.feed(first)
    await r.feed(second)
    await r.feed(second)  # redelivered as one batch
    await r.feed([second[0]])  # and the tombstone alone
    docs = r.index.sources("artifacts")
    assert docs[art]["type"] == "b" and docs[art]["version"] == 6
    assert r.index.sources("collections")[collection_id("k")]["latest_id"] == art
    anew = LocalRecord(second[0].topic, second[0].partition, 3, art.encode(), None)
    await r.feed([anew])
    assert art not in r.index.sources("artifacts")
    assert collection_id("k") not in r.index.sources("collections")


async def test_a_rewound_group_changes_nothing() -> None:
    r = replica()
    dataset = generate_dataset(3, DatasetScale.tiny())
    records = number(dataset_records(dataset, 3, MOVING))
    await r.feed(records, batch=37)
    before = dict(r.index.docs)
    writes = r.index.writes
    await r.feed(records, batch=11)  # every record again, other batch boundaries
    assert r.index.docs == before
    assert r.index.writes == writes


# -- joins and derived fields ----------------------------------------------------------------
async def test_an_artifact_before_its_parents_gets_them_when_they_arrive() -> None:
    r = replica()
    art, run, flow, task = uid(), uid(), uid(), uid()
    await r.feed(number([rec("artifact", art, 1, key="k", flow_run_id=run, task_run_id=task)]))
    assert "fr" not in r.index.sources("artifacts")[art]
    await r.feed(number([rec("flow_run", run, 1, name="r", flow_id=flow)]))
    assert r.index.sources("artifacts")[art]["fr"]["id"] == run
    await r.feed(number([rec("flow", flow, 1, name="F"), rec("task_run", task, 1, name="t")]))
    doc = r.index.sources("artifacts")[art]
    assert doc["flow"] == {"id": flow, "name": "F", "name_ci": "f", "has_deployment": False}
    assert doc["tr"]["has_subflow_run"] is False
    assert r.index.sources("collections")[collection_id("k")]["flow"]["name"] == "F"


async def test_derived_flags_follow_reparenting_even_across_crashes() -> None:
    """Defect 5: a subflow run re-parented twice, each step cut short by a crash after
    some writes: the old parents' `has_subflow_run` end false, the new one's true, and
    `parent_flow_run_id` follows the parent task run's own flow run."""
    store = MemoryStore()
    index, epochs = FakeIndex(), FakeEpochs()
    runs = [uid() for _ in range(3)]
    tasks = [uid() for _ in range(3)]
    sub, art_a, art_b, art_s = uid(), uid(), uid(), uid()
    base = [
        *(rec("flow_run", runs[i], 1, name=f"r{i}", flow_id=runs[0]) for i in range(3)),
        *(rec("task_run", tasks[i], 1, name=f"t{i}", flow_run_id=runs[i]) for i in range(3)),
        rec("artifact", art_a, 1, key="a", task_run_id=tasks[0]),
        rec("artifact", art_b, 1, key="b", task_run_id=tasks[1]),
        rec("artifact", art_s, 1, key="s", flow_run_id=sub),
        rec("flow_run", sub, 1, name="sub", flow_id=runs[0], parent_task_run_id=tasks[0]),
    ]
    moves = [
        rec("flow_run", sub, 2, name="sub", flow_id=runs[0], parent_task_run_id=tasks[1]),
        rec("flow_run", sub, 3, name="sub", flow_id=runs[0], parent_task_run_id=tasks[2]),
    ]
    records = number([*base, *moves])
    first = Replica(index, epochs, store)
    first.own_all()
    await first.feed(records[: len(base)])
    for i in range(2):
        crashing = Replica(index, epochs, store)
        crashing.own_all()
        index.fail_after = 1  # the step's first write lands, then the process "dies"
        crashing.processor.retry_max_s = 0
        with pytest.raises(Exception, match="cut short"):
            await _process_once(crashing, records[len(base) + i : len(base) + i + 1])
    survivor = Replica(index, epochs, store)
    survivor.own_all()
    await survivor.feed(records)
    docs = survivor.index.sources("artifacts")
    assert docs[art_a]["tr"]["has_subflow_run"] is False
    assert docs[art_b]["tr"]["has_subflow_run"] is False
    assert docs[art_s]["fr"]["parent_flow_run_id"] == runs[2]


async def _process_once(r: Replica, records: list[LocalRecord]) -> None:
    """One step whose writes fail are not retried (a crash): the store stays as it was."""
    from indexer import runtime

    async def no_retry(call: Any) -> Any:
        return await call()

    r.processor._retry = no_retry  # type: ignore[method-assign]
    await r.processor.process(records)
    assert runtime  # the module is the one under test


async def test_deployment_and_flow_changes_reach_every_run_of_the_flow() -> None:
    r = replica()
    flow, other, dep, run, art = uid(), uid(), uid(), uid(), uid()
    await r.feed(
        number(
            [
                rec("flow", flow, 1, name="Etl"),
                rec("flow", other, 1, name="Other"),
                rec("flow_run", run, 1, name="r", flow_id=flow, deployment_id=dep),
                rec("artifact", art, 1, flow_run_id=run),
                rec("deployment", dep, 1, name="d", flow_id=other),
            ]
        )
    )
    doc = r.index.sources("artifacts")[art]
    assert doc["flow"]["has_deployment"] is False
    assert doc["dep"]["flow_name_ci"] == "other"
    await r.feed([at(1, rec("deployment", dep, 2, name="d", flow_id=flow))])
    doc = r.index.sources("artifacts")[art]
    assert doc["flow"]["has_deployment"] is True and doc["dep"]["flow_name_ci"] == "etl"
    await r.feed([at(5, rec("flow", flow, 2, name="ETL2"))])
    doc = r.index.sources("artifacts")[art]
    assert doc["flow"]["name"] == "ETL2" and doc["dep"]["flow_name_ci"] == "etl2"


# -- collections -----------------------------------------------------------------------------
async def test_collections_are_exact_for_years_1_and_9999() -> None:
    """Defect 4: `created` far from 1970 does not fit a double; the earliest and latest
    are compared as exact integers."""
    r = replica()
    a, b, c = uid(), uid(), uid()
    await r.feed(
        number(
            [
                rec("artifact", a, 1, key="k", created="0001-01-01T00:00:00.000001Z"),
                rec("artifact", b, 1, key="k", created="9999-12-31T23:59:59.999998Z"),
                rec("artifact", c, 1, key="k", created="9999-12-31T23:59:59.999999Z"),
            ]
        )
    )
    col = r.index.sources("collections")[collection_id("k")]
    assert col["latest_id"] == c
    assert col["created"] == "0001-01-01T00:00:00.000001Z"
    assert col["updated"] == "9999-12-31T23:59:59.999999Z"
    assert col["created_us"] == -62_135_596_799_999_999
    await r.feed([at(5, tomb("artifact", c))])
    col = r.index.sources("collections")[collection_id("k")]
    assert col["latest_id"] == b


async def test_member_records_through_the_topic_are_idempotent() -> None:
    """Not local: the artifact owner publishes member records; feeding them back (twice,
    and an older one after a newer one) builds the collection once, exactly."""
    r = replica(local_members=False)
    a, b = uid(), uid()
    await r.feed(
        number(
            [
                rec("artifact", a, 1, key="k", type="x"),
                rec("artifact", b, 1, key="k", type="y", created="2024-02-01T00:00:00Z"),
            ]
        )
    )
    assert r.index.sources("collections") == {}
    members = member_records(r.published)
    await r.feed(members)
    await r.feed(members)
    col = r.index.sources("collections")[collection_id("k")]
    assert (col["latest_id"], col["type"]) == (b, "y")
    # b moves to another key: a leave record for k, a join for k2
    r.published.clear()
    await r.feed([at(9, rec("artifact", b, 2, key="k2", type="y"))])
    moved = member_records(r.published, start=10)
    assert sorted(m.live for _, m in r.published) == [False, True]
    await r.feed(moved)
    await r.feed(members)  # the old join of b to k, redelivered late: older offset, ignored
    cols = r.index.sources("collections")
    assert cols[collection_id("k")]["latest_id"] == a
    assert cols[collection_id("k2")]["latest_id"] == b


@pytest.mark.parametrize("text", [True, False])
async def test_documents_carry_their_searchable_text_unless_switched_off(text: bool) -> None:
    r = replica(search_text=text)
    art = uid()
    await r.feed(number([rec("artifact", art, 1, key="k", type="markdown", data="Revenue grew")]))
    doc = r.index.sources("artifacts")[art]
    col = r.index.sources("collections")[collection_id("k")]
    want = {"key": "k", "data": "Revenue grew"} if text else None
    assert doc.get("x") == want
    assert col.get("x") == want


# -- ownership: marks, rewrites, zombies -----------------------------------------------------
async def test_changes_while_a_partition_is_not_owned_are_marked_then_written() -> None:
    r = replica()
    run, art = uid(), uid()
    await r.feed(
        number(
            [
                rec("flow_run", run, 1, name="r", flow_id=uid()),
                rec("artifact", art, 1, flow_run_id=run),
            ]
        )
    )
    topic = KAFKA.topic_for("artifact")
    owned = [(topic, p) for p in range(3)]
    r.processor.revoked(owned)
    await r.feed([at(1, rec("flow_run", run, 2, name="renamed", flow_id=uid()))])
    assert r.index.sources("artifacts")[art]["fr"]["name"] == "r"
    assert any(k.startswith(b"D") for k in r.store.data)  # type: ignore[attr-defined]
    writes = r.index.writes
    r.processor.assigned(owned)  # the same replica again: epoch + 1, continuous
    await r.feed([])
    assert r.index.sources("artifacts")[art]["fr"]["name"] == "renamed"
    assert r.index.writes == writes + 1  # only the marked document, no rewrite
    assert not any(k.startswith(b"D") for k in r.store.data)  # type: ignore[attr-defined]


async def test_a_partition_someone_else_owned_meanwhile_is_rewritten_whole() -> None:
    r = replica()
    arts = [uid() for _ in range(40)]
    await r.feed(number([rec("artifact", a, 1, key=f"k{i % 4}") for i, a in enumerate(arts)]))
    topic = KAFKA.topic_for("artifact")
    r.processor.revoked([(topic, p) for p in range(3)])
    for p in range(3):  # another replica owned them in between
        await r.epochs.acquire(topic, p)
    r.index.docs.clear()  # and whatever it wrote, we must not rely on
    r.processor.assigned([(topic, p) for p in range(3)])
    r.processor.revoked([(KAFKA.members_topic, q) for q in range(2)])
    for q in range(2):
        await r.epochs.acquire(KAFKA.members_topic, q)
    r.processor.assigned([(KAFKA.members_topic, q) for q in range(2)])
    await r.feed([])  # rewrite_budget is 7: several steps, one cursor per partition
    assert set(r.index.sources("artifacts")) == set(arts)
    assert set(r.index.sources("collections")) == {collection_id(f"k{i}") for i in range(4)}


async def test_a_zombie_finishing_late_cannot_overwrite_the_new_owner() -> None:
    """Defect 3: replica A loses its partitions mid-stream, replica B (a newer epoch, its
    own store) consumes everything; A then finishes a batch with older states. Every
    document ends as B wrote it, which is the oracle's."""
    dataset = generate_dataset(8, DatasetScale.tiny())
    records = number(dataset_records(dataset, 8, MOVING))
    index, epochs = FakeIndex(), FakeEpochs()
    a = Replica(index, epochs)
    a.own_all()
    half = len(records) // 2
    await a.feed(records[:half])
    b = Replica(index, epochs)
    b.own_all()
    await b.feed(records)
    await a.processor.process(records[half : half + 40])  # the zombie's late batch
    arts, cols = expected_documents(dataset)
    assert comparable(index.sources("artifacts")) == comparable(arts)
    assert comparable(index.sources("collections")) == comparable(cols)
    assert index.superseded > 0


async def test_pipelined_steps_see_each_other_and_commit_in_order() -> None:
    """Steps computed while earlier ones are still being written (depth 3, a slow index):
    each reads the uncommitted state before it — edges included, so a parent change reaches
    an artifact whose edge is not committed yet — and the result is the oracle's."""
    dataset = generate_dataset(12, DatasetScale.tiny())
    records = number(dataset_records(dataset, 12, MOVING))
    r = Replica(FakeIndex(pauses=5), FakeEpochs())
    r.processor.depth = 3
    r.own_all()
    commits: list[int] = []
    tickets = [
        await r.processor.submit(records[i : i + 9], lambda res: commits.append(res.output.applied))
        for i in range(0, len(records), 9)
    ]
    assert len(r.processor._inflight) > 1  # the pipeline really overlapped
    await r.processor.flush()
    assert all(t.done() and t.exception() is None for t in tickets)
    assert len(commits) == len(tickets)
    arts, cols = expected_documents(dataset)
    assert comparable(r.index.sources("artifacts")) == comparable(arts)
    assert comparable(r.index.sources("collections")) == comparable(cols)


async def test_a_failed_step_in_flight_is_reset_and_nothing_after_it_commits() -> None:
    dataset = generate_dataset(13, DatasetScale.tiny())
    records = number(dataset_records(dataset, 13, MOVING))
    store = MemoryStore()
    r = Replica(FakeIndex(pauses=3), FakeEpochs(), store)
    r.processor.depth = 4
    r.own_all()
    await r.processor.process(records[:50])
    before = dict(store.data)

    async def broken(writes: Any) -> Any:
        raise PermanentError("a bug in the writer")  # any other error is retried for ever

    real = r.index.write
    r.index.write = broken  # type: ignore[method-assign]
    tickets = [await r.processor.submit(records[i : i + 10]) for i in (50, 60, 70)]
    with pytest.raises(PermanentError):
        await tickets[0]
    for later in tickets[1:]:  # they wait for the failed one, and fail with it
        with pytest.raises(PermanentError):
            await later
    with pytest.raises(PipelineError):
        await r.processor.submit(records[80:90])
    assert store.data == before  # nothing after the failure was committed
    await r.processor.reset()
    r.index.write = real  # type: ignore[method-assign]
    await r.feed(records)  # re-read from the store's positions
    arts, cols = expected_documents(dataset)
    assert comparable(r.index.sources("artifacts")) == comparable(arts)
    assert comparable(r.index.sources("collections")) == comparable(cols)


async def test_an_unexpected_failure_is_retried_until_it_goes_away() -> None:
    """Not classified (a bug, an unknown client error): retried with backoff, never skipped."""
    r = replica()
    art = uid()
    real = r.index.write
    failures = {"left": 3}

    async def flaky(writes: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("an error nobody classified")
        return await real(writes)

    r.index.write = flaky  # type: ignore[method-assign]
    await r.feed(number([rec("artifact", art, 1, key="k")]))
    assert failures["left"] == 0
    assert art in r.index.sources("artifacts")


class _DiesBeforeCommit(MemoryStore):
    """A store whose next commit kills the process: the step's writes landed, its state
    did not (a SIGKILL between the bulk and the store commit)."""

    def __init__(self, base: MemoryStore) -> None:
        super().__init__()
        self.data = base.data
        self.armed = False

    def commit(self, changes: Any) -> None:
        if self.armed:
            raise PermanentError("killed before the commit")
        super().commit(changes)


async def _crash_after_writes(
    store: MemoryStore, index: FakeIndex, epochs: FakeEpochs, records: Any
) -> None:
    dying = _DiesBeforeCommit(store)
    first = Replica(index, epochs, dying)
    first.own_all()
    await first.processor.process([])  # its partitions activated (that commit succeeds)
    dying.armed = True
    with pytest.raises(PermanentError):
        await first.processor.process(records)


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("suspect", [True, False])
async def test_a_restart_rewrites_what_an_uncommitted_run_wrote(suspect: bool, defer: bool) -> None:
    """A run applies a flow run's intermediate version and a collection's intermediate
    member, writes the documents, and dies before committing. The restarted run applies
    those records together with the later ones that undo them: the net change is nothing,
    yet the index holds the intermediate documents, so they must be rewritten. The
    partitions' end offsets at start-up mark the records to re-apply without shortcuts.
    `defer`: the restart finds a backlog behind these records; a step re-applying them
    still writes at once (a later step draining marks would take the shortcut)."""
    run, art, other = uid(), uid(), uid()
    flow = uid()
    base = [
        rec("flow", flow, 1, name="F"),
        rec("flow_run", run, 5, name="original", flow_id=flow),
        rec("artifact", art, 1, key="k", flow_run_id=run, created="2024-01-01T00:00:00Z"),
    ]
    store, index, epochs = MemoryStore(), FakeIndex(), FakeEpochs()
    r = Replica(index, epochs, store)
    r.own_all()
    await r.feed(number(base))
    later = [
        at(1, rec("flow_run", run, 8, name="intermediate", flow_id=flow)),
        at(1, rec("artifact", other, 1, key="k", created="2024-06-01T00:00:00Z")),
    ]
    await _crash_after_writes(store, index, epochs, later)
    assert index.sources("artifacts")[art]["fr"]["name"] == "intermediate"  # the damage
    assert index.sources("collections")[collection_id("k")]["latest_id"] == other
    undo = [
        at(2, rec("flow_run", run, 10, name="original", flow_id=flow)),
        at(2, rec("artifact", other, 2, key="elsewhere", created="2024-06-01T00:00:00Z")),
    ]
    restarted = Replica(index, epochs, store, defer=defer)
    restarted.own_all()
    if suspect:  # what the app does at start-up with each partition's end offset
        for record in later + undo:
            restarted.processor.suspect_below((record.topic, record.partition), 3)
    await restarted.processor.process(later + undo, behind=1_000 if defer else 0)
    await restarted.feed([])  # drains marks
    fixed = index.sources("artifacts")[art]["fr"]["name"] == "original"
    fixed &= index.sources("collections")[collection_id("k")]["latest_id"] == art
    assert fixed == suspect


async def test_a_move_published_by_an_uncommitted_run_is_retracted_by_the_restart() -> None:
    """A run publishes that an artifact moved from key k0 to k1, then dies before
    committing. The restart applies that move and a move back to k0 in one step: no net
    change of key, but the first run's member records stay in the topic for good, so
    every move away from a key must be published (with its own offset), not only the
    step's net change. Found by the replica SIGKILL fault test (an extra live collection)."""
    art = uid()
    store, index, epochs = MemoryStore(), FakeIndex(), FakeEpochs()
    r = Replica(index, epochs, store, local_members=False)
    r.own_all()
    await r.feed([at(0, rec("artifact", art, 1, key="k0"))])
    topic = list(r.published)
    dying = _DiesBeforeCommit(store)
    first = Replica(index, epochs, dying, local_members=False)
    first.own_all()
    await first.processor.process([])
    dying.armed = True
    moved = at(1, rec("artifact", art, 2, key="k1"))
    with pytest.raises(PermanentError):
        await first.processor.process([moved])
    topic += first.published
    assert [(m.key, m.live) for _, m in first.published] == [("k0", False), ("k1", True)]
    restarted = Replica(index, epochs, store, local_members=False)
    restarted.own_all()
    await restarted.feed([moved, at(2, rec("artifact", art, 3, key="k0"))])
    topic += restarted.published
    await restarted.feed(member_records(topic))
    cols = index.sources("collections")
    assert set(cols) == {collection_id("k0")}
    assert cols[collection_id("k0")]["latest_id"] == art


# -- the property ----------------------------------------------------------------------------
def _far_dates(dataset: Any, rng: random.Random) -> None:
    for art in dataset.artifacts:
        if rng.random() < 0.15:
            art["created"] = rng.choice(
                [
                    "0001-01-01T00:00:00.000001Z",
                    "9999-12-31T23:59:59.999999Z",
                    "1969-12-31T23:59:59.999999Z",
                ]
            )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    order=st.integers(0, 10_000),
    plan=st.lists(st.sampled_from(["step", "again", "suffix", "rewind", "crash"]), max_size=12),
    defer=st.booleans(),
)
async def test_any_delivery_converges_to_the_oracle(
    seed: int, order: int, plan: list[str], defer: bool
) -> None:
    """Noisy streams with relationship changes, random batches, re-delivered batches and
    suffixes, group rewinds and crashes mid-write all end in the oracle's documents; also
    when steps defer their documents as a backlog does (`defer`: random steps behind)."""
    rng = random.Random(order)
    dataset = generate_dataset(seed, DatasetScale.tiny())
    _far_dates(dataset, rng)
    records = number(dataset_records(dataset, order, MOVING))
    store, index, epochs = MemoryStore(), FakeIndex(), FakeEpochs()

    def start() -> Replica:
        r = Replica(index, epochs, store, defer=defer)
        r.own_all()
        return r

    r = start()
    done = 0
    for action in plan:
        size = rng.choice([1, 7, 60])
        behind = rng.choice([0, len(records)])
        if action == "step" and done < len(records):
            await r.processor.process(records[done : done + size], behind)
            done += size
        elif action == "again" and done:
            start_at = rng.randrange(done)
            await r.processor.process(records[start_at : start_at + size], behind)
        elif action == "suffix" and done:
            await r.feed(records[rng.randrange(done) : done], batch=size)
        elif action == "rewind":
            await r.feed(records[:done], batch=size)
        elif action == "crash" and done < len(records):
            index.fail_after = rng.randrange(5)
            with pytest.raises(Exception, match="cut short"):
                await _process_once(r, records[done : done + 200])
            index.fail_after = None
            r = start()  # a restart on the same store
    await r.feed(records, batch=rng.choice([5, 50, 500]))
    arts, cols = expected_documents(dataset)
    assert comparable(index.sources("artifacts")) == comparable(arts)
    assert comparable(index.sources("collections")) == comparable(cols)


def _ends(records: Sequence[LocalRecord]) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        ends[tp] = max(ends.get(tp, 0), record.offset + 1)
    return ends


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    order=st.integers(0, 10_000),
    runs=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 60)), min_size=1, max_size=6),
    defer=st.booleans(),
)
# a deployment visiting another flow within the records a dead run applied: that flow's
# `has_deployment` was written true and no net change of the restart rewrote it
@example(seed=3126, order=5163, runs=[(11, 56), (17, 22), (51, 53), (41, 6), (51, 40)], defer=False)
async def test_runs_dying_after_publishing_members_converge_to_the_oracle(
    seed: int, order: int, runs: list[tuple[int, int]], defer: bool
) -> None:
    """Member records through the topic: each run commits some steps, then applies more
    records, writes their documents, publishes their member records and dies before its
    commit; the next run repeats those records with other step boundaries. The member
    records of every run, dead or not, are in the topic for the owner of the keys."""
    rng = random.Random(order)
    dataset = generate_dataset(seed, DatasetScale.tiny())
    records = number(dataset_records(dataset, order, MOVING))
    store, index, epochs = MemoryStore(), FakeIndex(), FakeEpochs()
    topic: list[tuple[int, Member]] = []

    def start(ends: dict[tuple[str, int], int]) -> Replica:
        r = Replica(index, epochs, store, local_members=False, defer=defer)
        r.own_all()
        for tp, end in ends.items():  # what the app does at start-up (indexer/app.py)
            r.processor.suspect_below(tp, end)
        return r

    done = 0
    for committed, dying in runs:
        r = start(_ends(records))
        await r.feed(records[done : done + committed], batch=rng.choice([3, 20, 100]))
        done += committed
        topic += r.published
        doomed = _DiesBeforeCommit(store)
        d = Replica(index, epochs, doomed, local_members=False, defer=defer)
        d.own_all()
        # told of a backlog, the activation step keeps the marks, for the dead step to drain
        await d.processor.process([], rng.choice([0, 9]))
        doomed.armed = True
        if done < len(records):
            with pytest.raises(PermanentError):
                await d.processor.process(records[done : done + dying], rng.choice([0, 9]))
        topic += d.published
    r = start(_ends(records))
    await r.feed(records, batch=rng.choice([5, 50, 500]))
    topic += r.published
    await r.feed(member_records(topic), batch=rng.choice([5, 50, 500]))
    arts, cols = expected_documents(dataset)
    assert comparable(index.sources("artifacts")) == comparable(arts)
    assert comparable(index.sources("collections")) == comparable(cols)


async def test_clean_stream_oracle_sanity() -> None:
    """The oracle and the processor agree on a clean stream, and deleted artifacts are
    markers (`live: false`), never absent documents that a zombie could resurrect."""
    r = replica()
    dataset = generate_dataset(4, DatasetScale.tiny())
    await r.feed(number(dataset_records(dataset, 4, NONE)), batch=1000)
    arts, cols = expected_documents(dataset)
    assert comparable(r.index.sources("artifacts")) == comparable(arts)
    assert comparable(r.index.sources("collections")) == comparable(cols)
    markers = r.index.sources("artifacts", live_only=False).keys() - arts.keys()
    assert markers == {a["id"] for a in dataset.deleted["artifact"]}
    assert orjson.dumps(sorted(markers))


async def test_a_backlog_rewrites_each_document_once_when_it_is_drained() -> None:
    """Steps told that a backlog waits behind them write the artifacts their own records
    changed, and mark what they would rewrite (fan-out, collections); the first step that
    is not behind writes each marked document once, in its final form."""
    dataset = generate_dataset(5, DatasetScale.tiny())
    records = number(dataset_records(dataset, 5, MOVING))
    r = Replica(FakeIndex(), FakeEpochs(), defer=True)
    r.own_all()
    await r.processor.process([])
    art_topic = KAFKA.topic_for("artifact")
    for start in range(0, len(records), 40):
        batch = records[start : start + 40]
        own = {rec.key.decode() for rec in batch if rec.topic == art_topic and rec.key}
        out = await r.processor.process(batch, behind=len(records))
        written = {(w.kind, w.doc_id) for w in out.output.writes}
        assert {kind for kind, _ in written} <= {"artifact"}  # collections wait
        assert {doc_id for _, doc_id in written} <= own  # no fan-out rewrite
    assert not r.index.sources("collections", live_only=False)
    before = r.index.writes
    await r.feed([])
    arts, cols = expected_documents(dataset)
    assert comparable(r.index.sources("artifacts")) == comparable(arts)
    assert comparable(r.index.sources("collections")) == comparable(cols)
    drained = r.index.writes - before
    assert drained <= len(r.index.docs)  # every pending document written at most once


async def test_marks_a_dead_run_drained_are_written_again_even_if_unchanged_since() -> None:
    """A backlog defers a collection's rewrite (its latest artifact's flow run arrived); a
    run drains the mark, writes the collection with the flow run and dies before its
    commit. The restart finds the mark again, but the flow run is deleted meanwhile, so
    the collection's content is back to the content last *committed* as written: the
    drain must write it anyway, since the index holds what the dead run wrote."""
    flow, run, art = uid(), uid(), uid()
    store, index, epochs = MemoryStore(), FakeIndex(), FakeEpochs()
    r = Replica(index, epochs, store, defer=True)
    r.own_all()
    await r.processor.process(
        number(
            [
                rec("flow", flow, 1, name="F"),
                rec("artifact", art, 1, key="k", flow_run_id=run, created=TS),
            ]
        ),
        behind=0,
    )
    cid = collection_id("k")
    assert "fr" not in index.sources("collections")[cid]  # the run is not known yet
    await r.processor.process(
        [at(0, rec("flow_run", run, 1, name="late", flow_id=flow))], behind=1_000
    )
    assert "fr" not in index.sources("collections")[cid]  # deferred: marked, not written

    dying = _DiesBeforeCommit(store)
    dead = Replica(index, epochs, dying, defer=True)
    dead.own_all()
    await dead.processor.process([], behind=1_000)  # activation (committed), no drain
    dying.armed = True
    with pytest.raises(PermanentError):
        await dead.processor.process([], behind=0)  # drains the mark, writes, dies
    assert index.sources("collections")[cid]["fr"]["name"] == "late"  # what the index holds

    restarted = Replica(index, epochs, store, defer=True)
    restarted.own_all()
    await restarted.processor.process([at(1, tomb("flow_run", run))], behind=1_000)
    await restarted.feed([])  # drains the marks
    arts, cols = index.sources("artifacts"), index.sources("collections")
    assert "fr" not in arts[art] and "fr" not in cols[cid], cols[cid].get("fr")


def test_the_shared_cache_is_bounded_by_the_configured_entries() -> None:
    from indexer.runtime import Processor
    from indexer.state import Cache
    from services.config import IndexerSettings

    assert IndexerSettings().state_cache_entries == 100_000
    cache = Cache(4)
    for i in range(10):
        cache.put(bytes([i]), i)
        assert len(cache.data) <= 4
    assert cache.get(bytes([9])) == 9  # the newest stay
    assert cache.get(bytes([0])) is cache.get(b"never put")  # the oldest went
    processor = Processor(MemoryStore(), None, None, None, str, cache_entries=1_234)  # type: ignore[arg-type]
    assert processor.cache.capacity == 1_234
