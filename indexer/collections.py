"""PURE: collections (the `latest` endpoints) from a repartitioned member stream.

Artifacts are partitioned by id, collections by key. The owner of an artifact emits, for
every change, a *member record* to the partition of the artifact's key (and a leave
record to its previous key): `{"k": key, "a": artifact id, "o": source offset, "l": live,
"p": own fields}`. The owner of that key partition folds member records per (key,
artifact) by source offset — all of one artifact's records come from one source
partition, so offsets order them, and a re-sent or re-emitted record is a no-op — and
rebuilds the collection from its ranked live members: the latest is the greatest
(`created`, `id`), `created` the smallest `created` (exact integers, no float aggregate).

This is Kafka Streams' repartition-and-aggregate shape; the member stream is compacted on
(key, artifact), so the latest record of every membership is kept for rebuilding.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from indexer import keys
from indexer.graph import Refs
from indexer.state import Tx
from services.documents import ascii_lower, collection_id, id_order

Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Member:
    """One member record: an artifact joining (live) or leaving a key's collection."""

    key: str
    artifact_id: str
    offset: int
    live: bool
    doc: Doc | None

    def encode(self) -> Doc:
        """The JSON value published on the member topic."""
        return {
            "k": self.key,
            "a": self.artifact_id,
            "o": self.offset,
            "l": self.live,
            "p": self.doc,
        }

    @classmethod
    def decode(cls, value: Any) -> Member:
        """Parse a member record's JSON value (ValueError when malformed)."""
        if not isinstance(value, dict):
            raise ValueError("a member record is a JSON object")
        key, artifact_id, offset, live = (
            value.get("k"),
            value.get("a"),
            value.get("o"),
            value.get("l"),
        )
        doc = value.get("p")
        if not isinstance(key, str) or not isinstance(artifact_id, str):
            raise ValueError("member record without key or artifact id")
        if not isinstance(offset, int) or not isinstance(live, bool):
            raise ValueError("member record without offset or liveness")
        if live and not isinstance(doc, dict):
            raise ValueError("a live member record needs its artifact's fields")
        uuid.UUID(artifact_id)
        return cls(key, artifact_id, offset, live, doc if live else None)

    def record_key(self) -> bytes:
        """The Kafka key: compaction keeps the latest record per (collection, artifact)."""
        return f"{collection_id(self.key)}:{self.artifact_id}".encode()


def partition_of(key: str, partitions: int) -> int:
    """The member partition of an artifact key (stable across processes and restarts)."""
    return int(collection_id(key)[:8], 16) % partitions


def memberships(old: Doc | None, new: Doc | None, artifact_id: str, offset: int) -> list[Member]:
    """The member records an artifact's change from `old` to `new` own fields emits."""
    out: list[Member] = []
    old_key = None if old is None else old.get("key")
    new_key = None if new is None else new.get("key")
    if old_key is not None and old_key != new_key:
        out.append(Member(old_key, artifact_id, offset, False, None))
    if new_key is not None and new is not None:
        out.append(Member(new_key, artifact_id, offset, True, new))
    return out


def apply_member(tx: Tx, q: int, member: Member) -> str | None:
    """Fold one member record; the collection id it changed, or None (stale or repeated)."""
    cid = collection_id(member.key)
    key = keys.member(q, cid, member.artifact_id)
    old = tx.get(key)
    if old is not None and old["o"] >= member.offset:
        return None
    if old is not None and old["l"]:
        tx.put_raw(keys.ranked(q, cid, old["c"], member.artifact_id), False)
    created = None if member.doc is None else member.doc["created_us"]
    tx.put(
        key, {"o": member.offset, "l": member.live, "k": member.key, "c": created, "p": member.doc}
    )
    if member.live:
        assert created is not None
        tx.put_raw(keys.ranked(q, cid, created, member.artifact_id), True)
    return cid


def _first(tx: Tx, q: int, cid: str, reverse: bool) -> str | None:
    for key in tx.scan_keys(keys.ranked_prefix(q, cid), reverse=reverse):
        return keys.ranked_artifact(key)
    return None


def _move(tx: Tx, kind: bytes, old: str | None, new: str | None, q: int, cid: str) -> None:
    if old == new:
        return
    if old is not None:
        tx.put_raw(keys.collection_edge(kind, old, q, cid), False)
    if new is not None:
        tx.put_raw(keys.collection_edge(kind, new, q, cid), True)


def build_collection(tx: Tx, refs: Refs, q: int, cid: str) -> Doc:
    """The collection document of `cid` (a `live: false` marker when no member is live).

    Also keeps the collection's summary and its edges to the latest artifact's flow run
    and task run current, so a change of those reaches this collection.
    """
    summary_key = keys.collection(q, cid)
    summary = tx.get(summary_key) or {}
    latest_id = _first(tx, q, cid, reverse=True)
    if latest_id is None:
        _move(tx, b"f", summary.get("fr"), None, q, cid)
        _move(tx, b"t", summary.get("tr"), None, q, cid)
        # kept (without a latest) so a rewrite of this partition still finds the id
        tx.put(summary_key, {"a": None, "fr": None, "tr": None})
        return {"id": cid, "live": False}
    earliest_id = _first(tx, q, cid, reverse=False)
    assert earliest_id is not None
    latest = tx.get(keys.member(q, cid, latest_id))["p"]
    earliest = latest if earliest_id == latest_id else tx.get(keys.member(q, cid, earliest_id))["p"]
    fr_id, tr_id = latest.get("flow_run_id"), latest.get("task_run_id")
    _move(tx, b"f", summary.get("fr"), fr_id, q, cid)
    _move(tx, b"t", summary.get("tr"), tr_id, q, cid)
    tx.put(summary_key, {"a": latest_id, "fr": fr_id, "tr": tr_id})
    key = latest["key"]
    id_hi, id_lo = id_order(cid)
    doc: Doc = {
        "id": cid,
        "id_hi": id_hi,
        "id_lo": id_lo,
        "created": earliest["created"],
        "updated": latest["created"],
        "key": key,
        "latest_id": latest["id"],
        "type": latest.get("type"),
        "description": latest.get("description"),
        "data": latest.get("data"),
        "metadata_": latest.get("metadata_"),
        "flow_run_id": fr_id,
        "task_run_id": tr_id,
        "created_us": earliest["created_us"],
        "updated_us": latest["created_us"],
        "key_ci": ascii_lower(key),
        "live": True,
    }
    return refs.attach(doc, fr_id, tr_id)
