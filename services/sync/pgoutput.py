"""PURE: decode the messages of PostgreSQL's built-in `pgoutput` logical decoding plugin.

Protocol version 1 ("Logical Replication Message Formats" in PostgreSQL's manual), the
text format of column values, no streaming of in-progress transactions: every change
arrives between the `Begin` and the `Commit` of its transaction, and transactions arrive
in commit order. Messages this project does not use (`Type`, `Origin`, logical decoding
`Message`) are decoded to small records so a caller can ignore them explicitly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""PostgreSQL's timestamps on the wire count microseconds from 2000-01-01 UTC."""


class PgOutputError(ValueError):
    """Bytes that are not a `pgoutput` protocol version 1 message."""


class _Unchanged:
    """A TOASTed value the update did not change: pgoutput leaves it out ('u')."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
"""The value of a column whose (TOASTed) value an update left as it was."""

Value = str | None | _Unchanged
"""One column of a tuple: its text output, None for SQL NULL, or `UNCHANGED`."""


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a published table."""

    name: str
    type_oid: int
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """Sent before the first change of a table in a session, and after its schema changed."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts; `final_lsn` is its commit record's LSN."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction committed; `end_lsn` is just past its commit record."""

    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row."""

    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row; `old` is its replica identity (key or full row) when the table logs it."""

    relation_oid: int
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: its replica identity (the primary key, or the full row)."""

    relation_oid: int
    old: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of some tables (only sent when the publication publishes truncates)."""

    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message this project has no use for (`Type`, `Origin`, `Message`)."""

    kind: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Ignored


def lsn_to_str(lsn: int) -> str:
    """PostgreSQL's spelling of an LSN, `X/Y` in hex."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> int:
    """Parse `X/Y` (hex) into an integer LSN."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def pg_time(micros: int) -> datetime:
    """A wire timestamp (microseconds since 2000-01-01) as an aware UTC datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise PgOutputError("message ends early")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def byte(self) -> str:
        return chr(self._take(1)[0])

    def int8(self) -> int:
        return int(self._take(1)[0])

    def int16(self) -> int:
        return int(struct.unpack("!h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack("!i", self._take(4))[0])

    def uint32(self) -> int:
        return int(struct.unpack("!I", self._take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack("!q", self._take(8))[0])

    def uint64(self) -> int:
        return int(struct.unpack("!Q", self._take(8))[0])

    def string(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise PgOutputError("unterminated string")
        out = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return out

    def tuple_data(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                values.append(self._take(self.int32()).decode("utf-8"))
            else:  # 'b' only comes with the `binary` option, which is never asked for
                raise PgOutputError(f"unexpected column kind {kind!r}")
        return tuple(values)

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise PgOutputError(f"{len(self.buf) - self.pos} trailing bytes")


def parse_message(payload: bytes) -> Message:
    """Decode one `pgoutput` message (the payload of one XLogData record)."""
    if not payload:
        raise PgOutputError("empty message")
    r = _Reader(payload)
    tag = r.byte()
    message: Message
    if tag == "B":
        message = Begin(r.uint64(), pg_time(r.int64()), r.uint32())
    elif tag == "C":
        r.int8()  # flags, unused
        message = Commit(r.uint64(), r.uint64(), pg_time(r.int64()))
    elif tag == "R":
        oid, namespace, name = r.uint32(), r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.int16()):
            flags, col_name, type_oid = r.int8(), r.string(), r.uint32()
            r.int32()  # type modifier
            columns.append(Column(col_name, type_oid, bool(flags & 1)))
        message = Relation(oid, namespace, name, identity, tuple(columns))
    elif tag == "I":
        oid = r.uint32()
        if r.byte() != "N":
            raise PgOutputError("insert without a new tuple")
        message = Insert(oid, r.tuple_data())
    elif tag == "U":
        oid = r.uint32()
        kind = r.byte()
        old = None
        if kind in ("K", "O"):
            old = r.tuple_data()
            kind = r.byte()
        if kind != "N":
            raise PgOutputError("update without a new tuple")
        message = Update(oid, old, r.tuple_data())
    elif tag == "D":
        oid = r.uint32()
        if r.byte() not in ("K", "O"):
            raise PgOutputError("delete without an old tuple")
        message = Delete(oid, r.tuple_data())
    elif tag == "T":
        count = r.int32()
        r.int8()  # options (CASCADE, RESTART IDENTITY)
        message = Truncate(tuple(r.uint32() for _ in range(count)))
    elif tag == "Y":
        r.uint32(), r.string(), r.string()
        message = Ignored("type")
    elif tag == "O":
        r.uint64(), r.string()
        message = Ignored("origin")
    elif tag == "M":
        r.int8(), r.uint64(), r.string()
        r._take(r.int32())
        message = Ignored("message")
    else:
        raise PgOutputError(f"unknown message type {tag!r}")
    r.done()
    return message
