"""PURE: Prefect 3.x's database tables as the event contract reads them.

One description of the five tables shared by the two ways rows leave a Prefect
database: `backfill-prefect` and the snapshot of `sync-prefect` read them with
SQL (asyncpg gives Python values), the streaming phase of `sync-prefect` gets
them from logical replication as PostgreSQL's text output. Both end in
`row_to_data`, so a row becomes the same `data` snapshot whichever way it came.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from services.documents import ARTIFACT_RESPONSE_FIELDS, format_timestamp

TABLES: Final = ("flow", "deployment", "flow_run", "task_run", "artifact")
"""The tables read, in dependency order; each is also the contract's entity name."""

CONTRACT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "flow": ("id", "created", "updated", "name", "tags"),
    "deployment": (
        "id",
        "created",
        "updated",
        "name",
        "flow_id",
        "tags",
        "paused",
        "work_queue_name",
        "concurrency_limit",
    ),
    "flow_run": (
        "id",
        "created",
        "updated",
        "name",
        "flow_id",
        "deployment_id",
        "work_queue_name",
        "flow_version",
        "tags",
        "state_type",
        "state_name",
        "start_time",
        "end_time",
        "expected_start_time",
        "next_scheduled_start_time",
        "parent_task_run_id",
        "idempotency_key",
        "created_by",
    ),
    "task_run": (
        "id",
        "created",
        "updated",
        "name",
        "flow_run_id",
        "tags",
        "state_type",
        "state_name",
        "start_time",
        "end_time",
        "expected_start_time",
    ),
    "artifact": ARTIFACT_RESPONSE_FIELDS,  # Prefect's columns are its response's fields
}
"""The columns of each table that the contract's `data` carries (same names as Prefect's
REST API); the current state of a run is denormalised on its row (`state_type`,
`state_name`), so no join with the state tables is needed."""

_CASTS: Final = {"state_type": "state_type::text AS state_type"}  # an enum: asyncpg gives text


def select_list(table: str) -> str:
    """The SQL select list of a table's contract columns (casts make asyncpg give plain
    types)."""
    return ", ".join(_CASTS.get(c, c) for c in CONTRACT_FIELDS[table])


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    return value


def row_to_data(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (column name -> Python value) -> the JSON `data` of an upsert.

    Only the table's contract columns are kept; ids become canonical strings, timestamps
    Prefect's JSON form, and a null `tags` an empty list (as Prefect's API shows it).
    """
    data = {name: _plain(row[name]) for name in CONTRACT_FIELDS[table]}
    if "tags" in data and data["tags"] is None:
        data["tags"] = []
    return data


# ---- PostgreSQL's text output (logical replication) -> the values asyncpg gives ---------

BOOL_OID: Final = 16
INT8_OID: Final = 20
INT2_OID: Final = 21
INT4_OID: Final = 23
JSON_OID: Final = 114
FLOAT4_OID: Final = 700
FLOAT8_OID: Final = 701
TIMESTAMP_OID: Final = 1114
TIMESTAMPTZ_OID: Final = 1184
UUID_OID: Final = 2950
JSONB_OID: Final = 3802


class ValueDecodeError(ValueError):
    """A text value that is not what its column's type produces (a bug or a schema change)."""


def _timestamp(text: str, aware: bool) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:  # 'infinity', BC dates: Prefect never writes them
        raise ValueDecodeError(f"not an ISO timestamp: {text[:40]!r}") from exc
    if value.tzinfo is None:
        if aware:
            raise ValueDecodeError(f"timestamptz without an offset: {text[:40]!r}")
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def decode_text(type_oid: int, text: str) -> Any:
    """One column's text output -> the Python value asyncpg would return for it.

    Needs the session settings `DateStyle=ISO` and `TimeZone=UTC` on the connection that
    produced the text (the replication connection sets them). Types without a rule here
    (text, varchar, enums such as `state_type`) stay strings.
    """
    try:
        if type_oid == UUID_OID:
            return uuid.UUID(text)
        if type_oid == TIMESTAMPTZ_OID:
            return _timestamp(text, aware=True)
        if type_oid == TIMESTAMP_OID:
            return _timestamp(text, aware=False)
        if type_oid in (JSON_OID, JSONB_OID):
            return json.loads(text)
        if type_oid == BOOL_OID:
            if text not in ("t", "f"):
                raise ValueDecodeError(f"not a boolean: {text[:10]!r}")
            return text == "t"
        if type_oid in (INT2_OID, INT4_OID, INT8_OID):
            return int(text)
        if type_oid in (FLOAT4_OID, FLOAT8_OID):
            return float(text)
    except ValueDecodeError:
        raise
    except ValueError as exc:
        raise ValueDecodeError(f"type {type_oid}: {exc}") from exc
    return text
