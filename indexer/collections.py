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

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from indexer import keys
from indexer.graph import Refs
from indexer.state import Tx
from services.documents import ascii_lower, collection_id, id_order
from services.trigrams import trigram_text

Doc = dict[str, Any]

_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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
        if _CANONICAL_ID.fullmatch(artifact_id) is None:  # the common case needs no parse
            uuid.UUID(artifact_id)
        return cls(key, artifact_id, offset, live, doc if live else None)

    def record_key(self) -> bytes:
        """The Kafka key: compaction keeps the latest record per (collection, artifact)."""
        return f"{collection_id(self.key)}:{self.artifact_id}".encode()


def partition_of(key: str, partitions: int) -> int:
    """The member partition of an artifact key (stable across processes and restarts)."""
    return int(collection_id(key)[:8], 16) % partitions


def memberships(
    old: Doc | None,
    changes: Sequence[tuple[int, Doc | None]],
    artifact_id: str,
    offset: int,
) -> list[Member]:
    """The member records of one step of an artifact whose own fields went from `old`
    through `changes` — (offset, own fields after it, None when deleted), in partition
    order — where `offset` is the artifact's last offset in the step.

    Every move away from a key leaves it at the offset of that move, not only the step's
    net change: a run that dies after publishing may have published an intermediate key
    (a join that stays in the topic), and the run that repeats the step with other
    boundaries must retract it with a greater offset. The records are thus the same
    whatever the step boundaries: a leave per move, a join at each step's end.
    """
    out: list[Member] = []
    key = None if old is None else old.get("key")
    for at, fields in changes:
        now = None if fields is None else fields.get("key")
        if key is not None and now != key:
            out.append(Member(key, artifact_id, at, False, None))
        key = now
    final = changes[-1][1] if changes else old
    if key is not None and final is not None:
        out.append(Member(key, artifact_id, offset, True, final))
    return out


def apply_member(tx: Tx, q: int, member: Member) -> str | None:
    """Fold one member record; the collection id it changed, or None (stale or repeated).

    The collection's summary keeps its latest and earliest members: a member that joins
    updates them by comparison; only when the latest or earliest itself leaves or moves
    must `build_collection` look them up again in the ranked index.
    """
    cid = collection_id(member.key)
    key = keys.member(q, cid, member.artifact_id)
    old = tx.get(key)
    if old is not None and old["o"] >= member.offset:
        return None
    summary_key = keys.collection(q, cid)
    summary = dict(tx.get(summary_key) or _EMPTY)
    aid = member.artifact_id
    if old is not None and old["l"]:
        tx.put_raw(keys.ranked(q, cid, old["c"], aid), False)
        if summary.get("a") == aid:
            summary["a"], summary["dl"] = None, True
        if summary.get("e") == aid:
            summary["e"], summary["de"] = None, True
    created = None if member.doc is None else member.doc["created_us"]
    tx.put(
        key, {"o": member.offset, "l": member.live, "k": member.key, "c": created, "p": member.doc}
    )
    if member.live:
        assert created is not None
        tx.put_raw(keys.ranked(q, cid, created, aid), True)
        rank = (created, aid)
        if not summary.get("dl") and (summary["a"] is None or rank > (summary["lc"], summary["a"])):
            summary["a"], summary["lc"] = aid, created
        if not summary.get("de") and (summary["e"] is None or rank < (summary["ec"], summary["e"])):
            summary["e"], summary["ec"] = aid, created
    tx.put(summary_key, summary)
    return cid


_EMPTY: Doc = {"a": None, "lc": None, "e": None, "ec": None, "fr": None, "tr": None}


def _first(tx: Tx, q: int, cid: str, reverse: bool) -> tuple[int, str] | None:
    for key in tx.scan_keys(keys.ranked_prefix(q, cid), reverse=reverse):
        return keys.ranked_created(key), keys.ranked_artifact(key)
    return None


def _move(tx: Tx, kind: bytes, old: str | None, new: str | None, q: int, cid: str) -> None:
    if old == new:
        return
    if old is not None:
        tx.put_raw(keys.collection_edge(kind, old, q, cid), False)
    if new is not None:
        tx.put_raw(keys.collection_edge(kind, new, q, cid), True)


def build_collection(tx: Tx, refs: Refs, q: int, cid: str, text: bool = True) -> Doc:
    """The collection document of `cid` (a `live: false` marker when no member is live).

    `text`: with the searchable text and typed values of the latest artifact (`x`, `v`).
    Also keeps the collection's summary and its edges to the latest artifact's flow run
    and task run current, so a change of those reaches this collection.
    """
    summary_key = keys.collection(q, cid)
    summary = dict(tx.get(summary_key) or _EMPTY)
    if summary.get("dl") or (summary["a"] is None) != (summary["e"] is None):
        found = _first(tx, q, cid, reverse=True)
        summary["lc"], summary["a"] = found if found is not None else (None, None)
    if summary.get("de") or (summary["a"] is None) != (summary["e"] is None):
        found = _first(tx, q, cid, reverse=False)
        summary["ec"], summary["e"] = found if found is not None else (None, None)
    summary.pop("dl", None)
    summary.pop("de", None)
    latest_id, earliest_id = summary["a"], summary["e"]
    if latest_id is None:
        _move(tx, b"f", summary["fr"], None, q, cid)
        _move(tx, b"t", summary["tr"], None, q, cid)
        # kept (without members) so a rewrite of this partition still finds the id
        tx.put(summary_key, _EMPTY)
        return {"id": cid, "live": False}
    latest_member = tx.get(keys.member(q, cid, latest_id))
    latest = latest_member["p"]
    earliest = latest if earliest_id == latest_id else tx.get(keys.member(q, cid, earliest_id))["p"]
    fr_id, tr_id = latest.get("flow_run_id"), latest.get("task_run_id")
    _move(tx, b"f", summary["fr"], fr_id, q, cid)
    _move(tx, b"t", summary["tr"], tr_id, q, cid)
    summary["fr"], summary["tr"] = fr_id, tr_id
    tx.put(summary_key, summary)
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
        "key_ci": (folded := ascii_lower(key)),
        "key_tri": trigram_text(folded),
        "live": True,
    }
    if text:
        # the fields a member record carries are fixed by its artifact and source offset
        memo = (latest_id, latest_member["o"], latest["version"], latest["updated_us"])
        doc["x"], doc["v"] = refs.searchable(memo, latest)
    return refs.attach(doc, fr_id, tr_id)


def remember_content(tx: Tx, q: int, cid: str, doc: Doc) -> bool:
    """Record the content a collection is written with; False when it is the content last
    written (a member that is neither the latest nor the earliest joined: nothing to write).

    Collections of popular keys change members in almost every step of a load, but their
    document only when the latest or the earliest member changes.
    """
    digest = hashlib.blake2b(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), digest_size=12)
    content = digest.hexdigest()
    summary_key = keys.collection(q, cid)
    summary = tx.get(summary_key) or dict(_EMPTY)
    if summary.get("h") == content:
        return False
    tx.put(summary_key, {**summary, "h": content})
    return True
