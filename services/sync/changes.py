"""PURE: committed row changes of Prefect's tables -> contract events, with their versions.

`ChangeDecoder.feed` takes the `pgoutput` messages of a replication stream in order and,
at each commit that touched `flow`, `deployment`, `flow_run`, `task_run` or `artifact`,
returns a `Transaction`: one event per changed row (the row's last state in that
transaction — an insert then an update is one upsert, anything then a delete is one
delete), in the order of their last change.

Versions (docs/adr/0007-prefect-change-data-capture.md): every event of a transaction gets
`version_at(end_lsn)`, the end of its commit record; the snapshot gets
`version_at(consistent_point)` of the replication slot it was taken with. Rows change in
commit order and a transaction that the snapshot does not contain ends after the
consistent point, so versions grow strictly per entity across snapshot and stream.
`VERSION_BASE` puts them above any `updated`-microseconds version (`backfill-prefect`,
other producers), so the change stream always supersedes a backfill of the same database.

An update that leaves a large (TOASTed) contract column unchanged does not carry its
value; unless the same transaction or a full replica identity supplied it, the row comes
out as a `Refetch` for the adapter to read the current row in its place.

A `TRUNCATE` carries no row ids: the transaction names the truncated tables (its changes
hold only what the tables got after the truncate), and `truncate_deletes` turns the ids
the entity's topic still holds as live (`latest_ops` over its records) into deletes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from services.contract import encode_event
from services.prefect.tables import CONTRACT_FIELDS, TABLES, decode_text, row_to_data
from services.sync.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Ignored,
    Insert,
    Message,
    Relation,
    Truncate,
    Update,
    Value,
)

VERSION_BASE: Final = 1 << 62
"""Added to every LSN: above any microsecond timestamp (year 9999 is about 2.5e17) and
leaving 2^62 bytes of WAL before the contract's limit of 2^63 - 1."""

_EVENT_IDS: Final = uuid.UUID("5d0e3f4c-3b7a-4c55-9a43-0c6a7e1c2b10")


def version_at(lsn: int) -> int:
    """The event version of a change that committed at (ended by) `lsn`."""
    return VERSION_BASE + lsn


class SchemaMismatchError(ValueError):
    """A published table lacks a column the contract needs, or its key is not `id`."""


class SequenceError(ValueError):
    """Messages out of protocol order (a change outside a transaction, an unknown relation)."""


@dataclass(frozen=True, slots=True)
class ContractEvent:
    """One event for the entity topics."""

    entity: str
    entity_id: str
    op: Literal["upsert", "delete"]
    version: int
    occurred: datetime
    data: dict[str, Any] | None = None

    def encode(self) -> bytes:
        """The envelope's JSON; the event id is derived from (entity, id, version), so an
        event sent again after a restart carries the same id."""
        event_id = uuid.uuid5(_EVENT_IDS, f"{self.entity}/{self.entity_id}/{self.version}")
        return encode_event(
            self.entity,
            self.entity_id,
            self.op,
            self.version,
            self.data,
            occurred=self.occurred,
            event_id=str(event_id),
        )


@dataclass(frozen=True, slots=True)
class Refetch:
    """An upsert whose row the stream did not carry whole: read the current row instead
    (and publish nothing if it is gone: its delete comes later in the stream)."""

    entity: str
    entity_id: str
    version: int
    occurred: datetime
    missing: tuple[str, ...]


Change = ContractEvent | Refetch


@dataclass(frozen=True, slots=True)
class Transaction:
    """The effect of one committed transaction on the five tables."""

    end_lsn: int
    commit_time: datetime
    changes: tuple[Change, ...]
    truncated: tuple[str, ...] = ()


def snapshot_event(table: str, row: Mapping[str, Any], consistent_point: int) -> ContractEvent:
    """A row read in the slot's exported snapshot -> its upsert."""
    data = row_to_data(table, row)
    return ContractEvent(
        table, data["id"], "upsert", version_at(consistent_point), row["updated"], data
    )


@dataclass(slots=True)
class _Table:
    name: str
    relation: Relation
    positions: dict[str, int]  # contract column -> position in the tuple
    id_position: int


@dataclass(slots=True)
class _Row:
    op: Literal["upsert", "delete"]
    values: dict[str, Any] = field(default_factory=dict)  # contract column -> value/UNCHANGED


class ChangeDecoder:
    """Follows one replication session: relations, the open transaction, its rows."""

    def __init__(self, schema: str = "public", tables: tuple[str, ...] = TABLES) -> None:
        self.schema = schema
        self.tables = frozenset(tables)
        self._relations: dict[int, _Table | None] = {}
        self._begin: Begin | None = None
        self._rows: dict[tuple[str, str], _Row] = {}
        self._truncated: list[str] = []

    @property
    def in_transaction(self) -> bool:
        """Whether a `Begin` was seen without its `Commit` yet."""
        return self._begin is not None

    def feed(self, message: Message) -> Transaction | None:
        """Apply one message; a `Transaction` at each commit that changed our tables."""
        if isinstance(message, Relation):
            self._relations[message.oid] = self._table_of(message)
            return None
        if isinstance(message, Begin):
            self._begin, self._rows, self._truncated = message, {}, []
            return None
        if isinstance(message, Commit):
            return self._commit(message)
        if isinstance(message, Ignored):
            return None
        if self._begin is None:
            raise SequenceError(f"{type(message).__name__} outside a transaction")
        if isinstance(message, Truncate):
            for oid in message.relation_oids:
                table = self._known(oid)
                if table is not None:
                    if table.name not in self._truncated:
                        self._truncated.append(table.name)
                    # the table's rows changed earlier in this transaction are gone too
                    for key in [k for k in self._rows if k[0] == table.name]:
                        del self._rows[key]
            return None
        table = self._known(message.relation_oid)
        if table is None:
            return None
        if isinstance(message, Insert):
            self._upsert(table, message.new, None)
        elif isinstance(message, Update):
            self._upsert(table, message.new, message.old)
        else:
            self._delete(table, message)
        return None

    def _table_of(self, relation: Relation) -> _Table | None:
        if relation.namespace != self.schema or relation.name not in self.tables:
            return None
        names = [c.name for c in relation.columns]
        missing = [c for c in CONTRACT_FIELDS[relation.name] if c not in names]
        if missing:
            raise SchemaMismatchError(
                f"table {relation.namespace}.{relation.name} has no column "
                f"{', '.join(missing)}: not a Prefect 3.x schema"
            )
        keys = [c.name for c in relation.columns if c.key]
        if keys and keys != ["id"]:
            raise SchemaMismatchError(
                f"table {relation.name}: replica identity is ({', '.join(keys)}), not (id)"
            )
        positions = {c: names.index(c) for c in CONTRACT_FIELDS[relation.name]}
        return _Table(relation.name, relation, positions, names.index("id"))

    def _known(self, oid: int) -> _Table | None:
        if oid not in self._relations:
            raise SequenceError(f"a change of relation {oid} before its Relation message")
        return self._relations[oid]

    def _decode(self, table: _Table, values: tuple[Value, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        columns = table.relation.columns
        for name, pos in table.positions.items():
            text = values[pos]
            if text is None or text is UNCHANGED:
                out[name] = text
            else:
                assert isinstance(text, str)
                out[name] = decode_text(columns[pos].type_oid, text)
        return out

    def _row_id(self, table: _Table, values: tuple[Value, ...]) -> str:
        value = values[table.id_position]
        if not isinstance(value, str):
            raise SequenceError(f"a change of {table.name} without its id")
        return str(uuid.UUID(value))

    def _upsert(self, table: _Table, new: tuple[Value, ...], old: tuple[Value, ...] | None) -> None:
        key = (table.name, self._row_id(table, new))
        values = self._decode(table, new)
        gaps = [c for c, v in values.items() if v is UNCHANGED]
        if gaps:
            before = self._rows.get(key)
            known = before.values if before is not None and before.op == "upsert" else {}
            if not known and old is not None:
                known = {c: v for c, v in self._decode(table, old).items() if c in gaps}
            for column in gaps:
                if column in known and known[column] is not UNCHANGED:
                    values[column] = known[column]
        self._rows.pop(key, None)  # a row's position: its last change
        self._rows[key] = _Row("upsert", values)

    def _delete(self, table: _Table, message: Delete) -> None:
        key = (table.name, self._row_id(table, message.old))
        self._rows.pop(key, None)
        self._rows[key] = _Row("delete")

    def _commit(self, commit: Commit) -> Transaction | None:
        if self._begin is None:
            raise SequenceError("Commit without Begin")
        rows, truncated = self._rows, tuple(self._truncated)
        self._begin, self._rows, self._truncated = None, {}, []
        if not rows and not truncated:
            return None
        version = version_at(commit.end_lsn)
        changes: list[Change] = []
        for (entity, entity_id), row in rows.items():
            if row.op == "delete":
                changes.append(
                    ContractEvent(entity, entity_id, "delete", version, commit.commit_time)
                )
                continue
            missing = tuple(c for c, v in row.values.items() if v is UNCHANGED)
            if missing:
                changes.append(Refetch(entity, entity_id, version, commit.commit_time, missing))
            else:
                data = row_to_data(entity, row.values)
                changes.append(
                    ContractEvent(entity, entity_id, "upsert", version, commit.commit_time, data)
                )
        return Transaction(commit.end_lsn, commit.commit_time, tuple(changes), truncated)


def latest_ops(records: Iterable[tuple[str, int, str]]) -> dict[str, tuple[int, str]]:
    """(entity id, version, op) of a topic's records, in any order -> per id, the version
    and op of its highest version (what the indexer ends with)."""
    out: dict[str, tuple[int, str]] = {}
    for entity_id, version, op in records:
        known = out.get(entity_id)
        if known is None or version > known[0]:
            out[entity_id] = (version, op)
    return out


def truncate_deletes(
    table: str, latest: Mapping[str, tuple[int, str]], transaction: Transaction
) -> list[ContractEvent]:
    """The deletes a `TRUNCATE` of `table` in `transaction` publishes: one for every id whose
    latest event on the topic is an upsert older than the transaction, except ids the
    transaction wrote again after the truncate (their upsert carries the same version)."""
    version = version_at(transaction.end_lsn)
    rewritten = {c.entity_id for c in transaction.changes if c.entity == table}
    return [
        ContractEvent(table, entity_id, "delete", version, transaction.commit_time)
        for entity_id, (seen, op) in sorted(latest.items())
        if op == "upsert" and seen < version and entity_id not in rewritten
    ]
