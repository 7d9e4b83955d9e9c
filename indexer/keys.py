"""PURE: the layout of the indexer's state store (docs/propagation.md, "State").

Every key starts with one byte naming its family; ids are canonical UUID text (36 bytes),
partitions are 2 bytes big-endian, so every family sorts and prefix-scans as its layout
says. Values are JSON (orjson) unless noted.

    P topic 0x00 partition(4)       next offset to apply (ASCII integer)
    O topic 0x00 partition(4)       ownership of a group partition: epoch, rewrite cursor
    M                               store identity (group, topics, control index)
    g entity(1) id                  parent entity: {"v": version, "d": deleted, "p": part}
    r kind(1) target source         parent edge (b""): f flow<-run, d deployment<-run,
                                    t task run<-child run, F flow<-deployment
    n kind(1) target                live-edge count (ASCII integer): t subflows, F deployments
    a part(2) id                    artifact: {"v", "d", "p": own fields}
    x kind(1) target part(2) id     artifact edge (b""): f flow run, t task run
    m q(2) cid id                   collection member: {"o", "l", "k", "c", "p"}
    s q(2) cid created(8) id        live member by created (b""), for latest / earliest
    c q(2) cid                      collection summary: latest and earliest member
                                    {"a", "lc", "e", "ec"}, the latest's {"fr", "tr"}
    y kind(1) target q(2) cid       collection edge of its latest artifact (b"")
    D kind(1) part(2) id            a document to rewrite once its partition is active
"""

from __future__ import annotations

ID_LEN = 36
PARENT_CODES: dict[str, bytes] = {
    "flow": b"f",
    "deployment": b"d",
    "flow_run": b"r",
    "task_run": b"t",
}
_SIGN = 1 << 63


def _tp(topic: str, partition: int) -> bytes:
    return topic.encode() + b"\x00" + partition.to_bytes(4, "big")


def position(topic: str, partition: int) -> bytes:
    """Key of the next offset to apply on a topic-partition."""
    return b"P" + _tp(topic, partition)


def ownership(topic: str, partition: int) -> bytes:
    """Key of the ownership record of a group partition."""
    return b"O" + _tp(topic, partition)


def position_prefix() -> bytes:
    """Prefix of every position key."""
    return b"P"


def split_position(key: bytes) -> tuple[str, int]:
    """(topic, partition) of a position or ownership key."""
    return key[1:-5].decode(), int.from_bytes(key[-4:], "big")


META = b"M"


def parent(entity: str, entity_id: str) -> bytes:
    """Key of a parent entity's state."""
    return b"g" + PARENT_CODES[entity] + entity_id.encode()


def edge(kind: bytes, target: str, source: str) -> bytes:
    """Key of a parent edge (kinds f, d, t, F)."""
    return b"r" + kind + target.encode() + source.encode()


def edge_prefix(kind: bytes, target: str) -> bytes:
    """Prefix of every edge of `kind` pointing at `target`."""
    return b"r" + kind + target.encode()


def edge_source(key: bytes) -> str:
    """The source id of a parent edge key."""
    return key[-ID_LEN:].decode()


def count(kind: bytes, target: str) -> bytes:
    """Key of a live-edge counter (kinds t, F)."""
    return b"n" + kind + target.encode()


def _part(partition: int) -> bytes:
    return partition.to_bytes(2, "big")


def artifact(partition: int, artifact_id: str) -> bytes:
    """Key of an artifact's state in its source partition."""
    return b"a" + _part(partition) + artifact_id.encode()


def artifact_prefix(partition: int) -> bytes:
    """Prefix of every artifact of a source partition."""
    return b"a" + _part(partition)


def artifact_edge(kind: bytes, target: str, partition: int, artifact_id: str) -> bytes:
    """Key of an artifact's edge to its flow run (f) or task run (t)."""
    return b"x" + kind + target.encode() + _part(partition) + artifact_id.encode()


def artifact_edge_prefix(kind: bytes, target: str) -> bytes:
    """Prefix of every artifact edge of `kind` pointing at `target`."""
    return b"x" + kind + target.encode()


def split_tail(key: bytes) -> tuple[int, str]:
    """(partition, id) at the end of an artifact, edge or dirty key."""
    return int.from_bytes(key[-ID_LEN - 2 : -ID_LEN], "big"), key[-ID_LEN:].decode()


def member(q: int, cid: str, artifact_id: str) -> bytes:
    """Key of one artifact's membership in the collection `cid`."""
    return b"m" + _part(q) + cid.encode() + artifact_id.encode()


def _created(created_us: int) -> bytes:
    return (created_us + _SIGN).to_bytes(8, "big")


def ranked(q: int, cid: str, created_us: int, artifact_id: str) -> bytes:
    """Key ranking a live member by (created, id) within its collection."""
    return b"s" + _part(q) + cid.encode() + _created(created_us) + artifact_id.encode()


def ranked_prefix(q: int, cid: str) -> bytes:
    """Prefix of the ranked live members of one collection."""
    return b"s" + _part(q) + cid.encode()


RANKED_FAMILY = 1 + 2 + ID_LEN
"""Length of a ranked key's collection prefix: the overlay indexes changes by it."""

MERGED_FAMILIES: dict[bytes, int] = {
    b"s": RANKED_FAMILY,  # ranked members of one collection
    b"r": 2 + ID_LEN,  # parent edges of one kind to one target
    b"x": 2 + ID_LEN,  # artifact edges to one flow run or task run
    b"y": 2 + ID_LEN,  # collection edges to one flow run or task run
    b"D": 4,  # marks of one partition
}
"""Families whose scans must also see uncommitted changes, by the length of the prefix a
scan uses (indexer/state.py)."""


def ranked_artifact(key: bytes) -> str:
    """The artifact id of a ranked key."""
    return key[-ID_LEN:].decode()


def ranked_created(key: bytes) -> int:
    """The `created` (microseconds) of a ranked key."""
    return int.from_bytes(key[-ID_LEN - 8 : -ID_LEN], "big") - _SIGN


def collection(q: int, cid: str) -> bytes:
    """Key of a collection's summary."""
    return b"c" + _part(q) + cid.encode()


def collection_prefix(q: int) -> bytes:
    """Prefix of every collection summary of a members partition."""
    return b"c" + _part(q)


def collection_edge(kind: bytes, target: str, q: int, cid: str) -> bytes:
    """Key of a collection's edge (through its latest artifact) to a flow run or task run."""
    return b"y" + kind + target.encode() + _part(q) + cid.encode()


def collection_edge_prefix(kind: bytes, target: str) -> bytes:
    """Prefix of every collection edge of `kind` pointing at `target`."""
    return b"y" + kind + target.encode()


def dirty(kind: bytes, partition: int, doc_id: str) -> bytes:
    """Key marking an artifact (a) or collection (c) to rewrite once its partition is active."""
    return b"D" + kind + _part(partition) + doc_id.encode()


def dirty_prefix(kind: bytes, partition: int) -> bytes:
    """Prefix of the marks of one partition."""
    return b"D" + kind + _part(partition)
