"""sync-prefect's pure core: pgoutput messages -> transactions -> contract events."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.contract import parse_record
from services.prefect.tables import (
    BOOL_OID,
    INT4_OID,
    JSONB_OID,
    TIMESTAMPTZ_OID,
    UUID_OID,
    ValueDecodeError,
    decode_text,
    row_to_data,
)
from services.sync.changes import (
    VERSION_BASE,
    ChangeDecoder,
    ContractEvent,
    Refetch,
    SchemaMismatchError,
    SequenceError,
    Transaction,
    latest_ops,
    snapshot_event,
    truncate_deletes,
    version_at,
)
from services.sync.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Ignored,
    Insert,
    PgOutputError,
    Relation,
    Truncate,
    Update,
    lsn_to_str,
    parse_message,
    pg_time,
    str_to_lsn,
)

TEXT_OID, VARCHAR_OID, ENUM_OID = 25, 1043, 16_500

# ---- a pgoutput encoder (the protocol as the manual spells it) ------------------------------


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple(values: list[Any]) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            raw = v.encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def _micros(when: datetime) -> int:
    return (when - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def begin(final_lsn: int, when: datetime, xid: int = 7) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, _micros(when), xid)


def commit(commit_lsn: int, end_lsn: int, when: datetime) -> bytes:
    return b"C" + struct.pack("!bQQq", 0, commit_lsn, end_lsn, _micros(when))


def relation(
    oid: int, name: str, columns: list[tuple[str, int, bool]], ns: str = "public"
) -> bytes:
    out = b"R" + struct.pack("!I", oid) + _s(ns) + _s(name) + b"d" + struct.pack("!h", len(columns))
    for col, type_oid, key in columns:
        out += struct.pack("!b", 1 if key else 0) + _s(col) + struct.pack("!Ii", type_oid, -1)
    return out


def insert(oid: int, values: list[Any]) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + _tuple(values)


def update(oid: int, values: list[Any], old: list[Any] | None = None, kind: bytes = b"O") -> bytes:
    head = b"U" + struct.pack("!I", oid)
    if old is not None:
        head += kind + _tuple(old)
    return head + b"N" + _tuple(values)


def delete(oid: int, old: list[Any], kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack("!I", oid) + kind + _tuple(old)


# ---- Prefect-shaped relations ---------------------------------------------------------------

ARTIFACT_COLUMNS = [
    ("id", UUID_OID, True),
    ("created", TIMESTAMPTZ_OID, False),
    ("updated", TIMESTAMPTZ_OID, False),
    ("key", VARCHAR_OID, False),
    ("task_run_id", UUID_OID, False),
    ("flow_run_id", UUID_OID, False),
    ("type", VARCHAR_OID, False),
    ("data", JSONB_OID, False),
    ("description", VARCHAR_OID, False),
    ("metadata_", JSONB_OID, False),
]
FLOW_COLUMNS = [
    ("id", UUID_OID, True),
    ("created", TIMESTAMPTZ_OID, False),
    ("updated", TIMESTAMPTZ_OID, False),
    ("name", VARCHAR_OID, False),
    ("tags", JSONB_OID, False),
    ("labels", JSONB_OID, False),
]
T0 = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC)


def artifact_values(aid: str, data: Any = '"# hello"', key: Any = "report") -> list[Any]:
    return [
        aid,
        "2026-11-30 10:00:00.123456+00",
        "2026-11-30 10:00:01+00",
        key,
        None,
        "3c90c3cc-0d44-4b50-8888-8dd25736052a",
        "markdown",
        data,
        None,
        '{"k": "v"}',
    ]


def decoder_with_relations() -> ChangeDecoder:
    d = ChangeDecoder()
    assert d.feed(parse_message(relation(1, "artifact", ARTIFACT_COLUMNS))) is None
    assert d.feed(parse_message(relation(2, "flow", FLOW_COLUMNS))) is None
    return d


def run(d: ChangeDecoder, *payloads: bytes) -> list[Any]:
    return [t for t in (d.feed(parse_message(p)) for p in payloads) if t is not None]


# ---- pgoutput ---------------------------------------------------------------------------------


def test_parse_every_message_kind() -> None:
    assert parse_message(begin(0x16B374D8, T0, 42)) == Begin(0x16B374D8, T0, 42)
    assert parse_message(commit(10, 20, T0)) == Commit(10, 20, T0)
    rel = parse_message(relation(5, "flow", FLOW_COLUMNS))
    assert isinstance(rel, Relation)
    assert (rel.oid, rel.namespace, rel.name, rel.replica_identity) == (5, "public", "flow", "d")
    assert [(c.name, c.type_oid, c.key) for c in rel.columns] == FLOW_COLUMNS
    assert parse_message(insert(5, ["a", None])) == Insert(5, ("a", None))
    assert parse_message(update(5, ["a", UNCHANGED])) == Update(5, None, ("a", UNCHANGED))
    assert parse_message(update(5, ["b"], ["a"], b"K")) == Update(5, ("a",), ("b",))
    assert parse_message(delete(5, ["a", None])) == Delete(5, ("a", None))
    truncate = b"T" + struct.pack("!ib", 2, 0) + struct.pack("!II", 5, 6)
    assert parse_message(truncate) == Truncate((5, 6))
    assert parse_message(b"Y" + struct.pack("!I", 9) + _s("public") + _s("state_type")) == Ignored(
        "type"
    )
    assert parse_message(b"O" + struct.pack("!Q", 1) + _s("origin")) == Ignored("origin")
    message = b"M" + struct.pack("!bQ", 1, 5) + _s("prefix") + struct.pack("!i", 3) + b"abc"
    assert parse_message(message) == Ignored("message")


def test_text_values_are_utf8() -> None:
    parsed = parse_message(insert(1, ["é ✓ \u0000x"[:4]]))
    assert isinstance(parsed, Insert)
    assert parsed.new == ("é ✓ ",)


@pytest.mark.parametrize(
    "payload",
    [b"", b"Z", begin(1, T0)[:-1], begin(1, T0) + b"x", b"I" + struct.pack("!I", 1) + b"X"],
)
def test_malformed_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(PgOutputError):
        parse_message(payload)


def test_lsn_spelling_round_trips() -> None:
    assert lsn_to_str(0x16B374D8) == "0/16B374D8"
    assert lsn_to_str((3 << 32) | 0xA) == "3/A"
    assert str_to_lsn("3/A") == (3 << 32) | 0xA
    assert pg_time(0) == datetime(2000, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        str_to_lsn("nope")


# ---- text values -> what asyncpg gives ----------------------------------------------------


def test_decode_text_matches_asyncpg_values() -> None:
    aid = "0b8f1c9e-3f57-4f1e-9a53-2c1d7e0f6a11"
    assert decode_text(UUID_OID, aid) == uuid.UUID(aid)
    assert decode_text(TIMESTAMPTZ_OID, "2026-11-30 10:00:00.5+02") == datetime(
        2026, 11, 30, 8, 0, 0, 500000, tzinfo=UTC
    )
    assert decode_text(JSONB_OID, '{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert decode_text(BOOL_OID, "t") is True
    assert decode_text(BOOL_OID, "f") is False
    assert decode_text(INT4_OID, "-3") == -3
    assert decode_text(ENUM_OID, "COMPLETED") == "COMPLETED"
    for oid, bad in [(UUID_OID, "x"), (TIMESTAMPTZ_OID, "infinity"), (BOOL_OID, "yes")]:
        with pytest.raises(ValueDecodeError):
            decode_text(oid, bad)
    with pytest.raises(ValueDecodeError):
        decode_text(TIMESTAMPTZ_OID, "2026-11-30 10:00:00")  # no offset: TimeZone not set


def test_streamed_row_equals_the_same_row_read_with_sql() -> None:
    aid = str(uuid.uuid4())
    d = decoder_with_relations()
    (txn,) = run(d, begin(100, T0), insert(1, artifact_values(aid)), commit(100, 108, T0))
    (event,) = txn.changes
    asyncpg_row = {
        "id": uuid.UUID(aid),
        "created": datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC),
        "updated": datetime(2026, 11, 30, 10, 0, 1, tzinfo=UTC),
        "key": "report",
        "type": "markdown",
        "description": None,
        "data": "# hello",
        "metadata_": {"k": "v"},
        "flow_run_id": uuid.UUID("3c90c3cc-0d44-4b50-8888-8dd25736052a"),
        "task_run_id": None,
    }
    assert event.data == row_to_data("artifact", asyncpg_row)
    assert event.data["created"] == "2026-11-30T10:00:00.123456Z"
    assert event.data["updated"] == "2026-11-30T10:00:01Z"


# ---- transactions --------------------------------------------------------------------------


def test_insert_update_delete_become_upserts_and_deletes_with_commit_versions() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    d = decoder_with_relations()
    first = run(d, begin(100, T0), insert(1, artifact_values(a)), commit(100, 108, T0))
    later = T0 + timedelta(seconds=1)
    second = run(
        d,
        begin(200, later),
        insert(1, artifact_values(b)),
        update(1, artifact_values(a, data='"# changed"')),
        commit(200, 208, later),
    )
    third = run(d, begin(300, later), delete(1, [a] + [None] * 9), commit(300, 308, later))
    assert [e.op for t in first + second + third for e in t.changes] == [
        "upsert",
        "upsert",
        "upsert",
        "delete",
    ]
    (t1,), (t2,), (t3,) = first, second, third
    assert t1.end_lsn == 108 and t1.changes[0].version == version_at(108) == VERSION_BASE + 108
    assert [(c.entity_id, c.version) for c in t2.changes] == [
        (b, version_at(208)),
        (a, version_at(208)),
    ]
    changed = t2.changes[1]
    assert isinstance(changed, ContractEvent) and changed.data is not None
    assert changed.data["data"] == "# changed"
    deleted = t3.changes[0]
    assert isinstance(deleted, ContractEvent)
    assert (deleted.entity, deleted.entity_id, deleted.data) == ("artifact", a, None)
    assert deleted.occurred == later


def test_one_event_per_row_per_transaction_with_its_last_state() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    d = decoder_with_relations()
    (txn,) = run(
        d,
        begin(100, T0),
        insert(1, artifact_values(a)),
        update(1, artifact_values(a, key="second")),
        update(1, artifact_values(a, key="third")),
        insert(1, artifact_values(b)),
        delete(1, [b] + [None] * 9),
        commit(100, 108, T0),
    )
    assert [(c.entity_id, type(c).__name__) for c in txn.changes] == [
        (a, "ContractEvent"),
        (b, "ContractEvent"),
    ]
    upsert, gone = txn.changes
    assert isinstance(upsert, ContractEvent) and upsert.data is not None
    assert upsert.data["key"] == "third"
    assert isinstance(gone, ContractEvent) and gone.op == "delete"


def test_unchanged_toasted_values_come_from_the_transaction_or_the_old_row_else_refetch() -> None:
    a = str(uuid.uuid4())
    d = decoder_with_relations()
    big = '"' + "x" * 50 + '"'
    # the same transaction wrote the value first
    (txn,) = run(
        d,
        begin(100, T0),
        insert(1, artifact_values(a, data=big)),
        update(1, artifact_values(a, data=UNCHANGED, key="k2")),
        commit(100, 108, T0),
    )
    assert isinstance(txn.changes[0], ContractEvent) and txn.changes[0].data is not None
    assert txn.changes[0].data["data"] == "x" * 50
    # REPLICA IDENTITY FULL: the old row has it
    (txn,) = run(
        d,
        begin(200, T0),
        update(1, artifact_values(a, data=UNCHANGED), old=artifact_values(a, data=big)),
        commit(200, 208, T0),
    )
    assert isinstance(txn.changes[0], ContractEvent) and txn.changes[0].data is not None
    assert txn.changes[0].data["data"] == "x" * 50
    # nowhere in the stream: the adapter reads the row
    (txn,) = run(
        d,
        begin(300, T0),
        update(1, artifact_values(a, data=UNCHANGED)),
        commit(300, 308, T0),
    )
    assert txn.changes == (Refetch("artifact", a, version_at(308), T0, ("data",)),)


def test_other_tables_schemas_and_empty_transactions_give_nothing() -> None:
    d = decoder_with_relations()
    run(d, relation(3, "flow_run_state", [("id", UUID_OID, True)]))
    run(d, relation(4, "artifact", ARTIFACT_COLUMNS, ns="other"))
    assert (
        run(
            d,
            begin(100, T0),
            insert(3, [str(uuid.uuid4())]),
            insert(4, artifact_values(str(uuid.uuid4()))),
            commit(100, 108, T0),
        )
        == []
    )
    assert run(d, begin(200, T0), commit(200, 208, T0)) == []


def test_truncate_is_reported() -> None:
    d = decoder_with_relations()
    truncate = b"T" + struct.pack("!ib", 1, 0) + struct.pack("!I", 1)
    (txn,) = run(d, begin(100, T0), truncate, commit(100, 108, T0))
    assert txn.truncated == ("artifact",) and txn.changes == ()


def test_truncate_drops_the_rows_changed_before_it_and_keeps_those_after() -> None:
    d = decoder_with_relations()
    truncate = b"T" + struct.pack("!ib", 1, 0) + struct.pack("!I", 1)
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    (txn,) = run(
        d,
        begin(100, T0),
        insert(1, artifact_values(before)),
        truncate,
        insert(1, artifact_values(after)),
        truncate,  # twice: named once
        insert(1, artifact_values(after, key="again")),
        commit(100, 108, T0),
    )
    assert txn.truncated == ("artifact",)
    assert [(c.entity_id, c.op) for c in txn.changes if isinstance(c, ContractEvent)] == [
        (after, "upsert")
    ]


def test_latest_ops_keeps_each_ids_highest_version_in_any_order() -> None:
    records = [("a", 5, "upsert"), ("b", 3, "upsert"), ("a", 9, "delete"), ("a", 7, "upsert")]
    records += [("b", 2, "delete"), ("c", 4, "upsert"), ("c", 4, "upsert")]
    assert latest_ops(records) == {"a": (9, "delete"), "b": (3, "upsert"), "c": (4, "upsert")}
    assert latest_ops([]) == {}


def test_truncate_deletes_what_the_topic_holds_as_live_and_older() -> None:
    rewritten = str(uuid.uuid4())
    data = {"id": rewritten}
    txn = Transaction(
        108,
        T0,
        (
            ContractEvent("artifact", rewritten, "upsert", version_at(108), T0, data),
            ContractEvent("flow", "f", "upsert", version_at(108), T0, {"id": "f"}),
        ),
        ("artifact",),
    )
    latest = {
        "live": (version_at(50), "upsert"),
        "gone": (version_at(60), "delete"),
        "newer": (version_at(200), "upsert"),  # re-read after a crash: a later insert
        "f": (version_at(50), "upsert"),  # a flow of the transaction has this id: still deleted
        rewritten: (version_at(40), "upsert"),  # inserted again after the truncate
    }
    deletes = truncate_deletes("artifact", latest, txn)
    assert deletes == [
        ContractEvent("artifact", "f", "delete", version_at(108), T0),
        ContractEvent("artifact", "live", "delete", version_at(108), T0),
    ]
    assert truncate_deletes("flow", {}, txn) == []


def test_protocol_and_schema_errors() -> None:
    d = ChangeDecoder()
    with pytest.raises(SequenceError):
        d.feed(parse_message(insert(1, artifact_values(str(uuid.uuid4())))))
    d.feed(parse_message(begin(1, T0)))
    with pytest.raises(SequenceError):  # no Relation message for oid 1
        d.feed(parse_message(insert(1, artifact_values(str(uuid.uuid4())))))
    with pytest.raises(SchemaMismatchError, match="no column created, updated, name, tags"):
        d.feed(parse_message(relation(2, "flow", [("id", UUID_OID, True)])))
    with pytest.raises(SchemaMismatchError, match="replica identity"):
        d.feed(parse_message(relation(2, "flow", [(n, o, True) for n, o, _ in FLOW_COLUMNS])))


# ---- versions and envelopes ---------------------------------------------------------------


def test_snapshot_versions_precede_every_streamed_change() -> None:
    consistent_point = 5000
    row = {
        "id": uuid.uuid4(),
        "created": T0,
        "updated": T0,
        "name": "etl",
        "tags": None,
    }
    event = snapshot_event("flow", row, consistent_point)
    assert event.version == version_at(consistent_point)
    assert event.data is not None and event.data["tags"] == []
    # a transaction missing from the snapshot commits at or after the consistent point,
    # so its end LSN (its version) is greater
    assert version_at(consistent_point + 1) > event.version
    # versions stay above microsecond timestamps (backfill) and within the contract
    assert version_at(0) > 253_402_300_799_999_999  # 9999-12-31 in microseconds
    assert version_at((1 << 62) - 1) <= 2**63 - 1


def test_encoded_events_satisfy_the_contract_with_stable_ids() -> None:
    a = str(uuid.uuid4())
    d = decoder_with_relations()
    (txn,) = run(
        d,
        begin(100, T0),
        insert(1, artifact_values(a)),
        commit(100, 108, T0),
    )
    (event,) = txn.changes
    assert isinstance(event, ContractEvent)
    parsed = parse_record("artifact", a.encode(), event.encode())
    assert (parsed.op, parsed.version) == ("upsert", version_at(108))
    assert orjson.loads(event.encode())["event_id"] == orjson.loads(event.encode())["event_id"]
    gone = ContractEvent("artifact", a, "delete", version_at(200), T0)
    assert parse_record("artifact", a.encode(), gone.encode()).op == "delete"
    assert orjson.loads(gone.encode())["occurred"] == "2026-11-30T10:00:00.123456Z"
