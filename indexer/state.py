"""One step's view of the state store: committed state plus the step's own changes.

A step never writes the store directly. It reads through a `Tx`: the step's changes
first, then a small cache of decoded values, then the store. Everything it changed is
committed at the end in one atomic batch together with the new positions, so the store
always holds the state after some whole number of steps.

Scans read the committed store; families registered in `merged` (the ranked members of a
collection) also see the step's own changes, merged in key order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import orjson


class Store(Protocol):
    """Ordered key-value state with atomic multi-key commits."""

    def get(self, key: bytes) -> bytes | None:
        """The committed value of `key`, or None."""
        ...

    def scan(
        self, prefix: bytes, reverse: bool = False, after: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Committed (key, value) pairs whose key starts with `prefix`, in key order.

        `after` (forward scans only) starts strictly after that key.
        """
        ...

    def commit(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply every change at once (None deletes the key); durable when it returns."""
        ...

    def close(self) -> None:
        """Release the store (later calls are errors)."""
        ...


_MISSING = object()


class Cache:
    """Decoded values of hot keys (parents, counters) shared across steps.

    Bounded by entry count; when full, the older half is dropped. Values are shared:
    callers never mutate what `Tx.get` returns.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self.data: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Any:
        """The cached value, or the `_MISSING` sentinel."""
        return self.data.get(key, _MISSING)

    def put(self, key: bytes, value: Any) -> None:
        """Remember a committed value (None for an absent key)."""
        if len(self.data) >= self.capacity:
            drop = len(self.data) // 2
            for old in list(self.data)[:drop]:
                del self.data[old]
        self.data[key] = value


CACHED_FAMILIES = (b"g", b"n", b"P", b"O")
"""Families whose decoded values are cached across steps (small, read on every step)."""


class Tx:
    """Reads see committed state plus this step's changes; `changes()` is the commit batch.

    `base` is the previous step when it is not committed yet (the runtime computes a step
    while the previous one's writes are in flight): reads fall through to it, so this step
    sees every change of the steps before it, committed or not.
    """

    def __init__(
        self,
        store: Store,
        cache: Cache | None = None,
        merged: dict[bytes, int] | None = None,
        base: Tx | None = None,
    ) -> None:
        self.store = store
        self.cache = cache or Cache()
        self.base = base
        self._values: dict[bytes, Any] = {}  # changed: decoded value, None = deleted
        self._raw: dict[bytes, bytes | None] = {}  # changed raw-bytes keys
        self._merged: dict[bytes, int] = merged or (base._merged if base is not None else {})
        self._families: dict[bytes, set[bytes]] = {}

    # -- reads --------------------------------------------------------------------------
    def get(self, key: bytes) -> Any:
        """The decoded JSON value of `key`, or None."""
        tx: Tx | None = self
        while tx is not None:
            value = tx._values.get(key, _MISSING)
            if value is not _MISSING:
                return value
            tx = tx.base
        if key[:1] in CACHED_FAMILIES:
            hit = self.cache.get(key)
            if hit is not _MISSING:
                return hit
            raw = self.store.get(key)
            value = None if raw is None else orjson.loads(raw)
            self.cache.put(key, value)
            return value
        raw = self.store.get(key)
        return None if raw is None else orjson.loads(raw)

    def _status(self, key: bytes) -> bool | None:
        """Whether an overlay of the chain added (True) or removed (False) a raw key; None
        when no overlay touched it."""
        tx: Tx | None = self
        while tx is not None:
            if key in tx._raw:
                return tx._raw[key] is not None
            tx = tx.base
        return None

    def exists(self, key: bytes) -> bool:
        """Whether a raw (valueless) key is present."""
        status = self._status(key)
        if status is not None:
            return status
        return self.store.get(key) is not None

    def _changed(self, family: bytes, prefix: bytes) -> set[bytes]:
        out: set[bytes] = set()
        tx: Tx | None = self
        while tx is not None:
            out.update(k for k in tx._families.get(family, ()) if k.startswith(prefix))
            tx = tx.base
        return out

    def scan_keys(
        self, prefix: bytes, reverse: bool = False, after: bytes | None = None
    ) -> Iterator[bytes]:
        """Keys under `prefix`: committed ones, merged with the changes of this step and the
        uncommitted steps before it when the prefix is a registered family (`after`: forward
        scans of other families only)."""
        committed = (k for k, _ in self.store.scan(prefix, reverse, after))
        family = self._merged.get(prefix[:1])
        if family is None or len(prefix) < family:
            yield from committed
            return
        changed = self._changed(prefix[:family], prefix)
        if not changed:
            yield from committed
            return
        mine = sorted(changed, reverse=reverse)
        last = None
        for key in heapq.merge(committed, mine, reverse=reverse):
            if key == last:
                continue
            last = key
            if key not in changed or self._status(key):
                yield key

    # -- writes -------------------------------------------------------------------------
    def put(self, key: bytes, value: Any) -> None:
        """Set `key` to a JSON value (None deletes it)."""
        self._values[key] = value

    def put_raw(self, key: bytes, present: bool) -> None:
        """Add (empty value) or remove a valueless key (edges, ranks, marks)."""
        self._raw[key] = b"" if present else None
        family = self._merged.get(key[:1])
        if family is not None:
            self._families.setdefault(key[:family], set()).add(key)

    def add_count(self, key: bytes, delta: int) -> None:
        """Add `delta` to an integer counter (removed at zero)."""
        current = self.get(key) or 0
        total = current + delta
        self.put(key, total if total else None)

    # -- commit -------------------------------------------------------------------------
    def changes(self) -> dict[bytes, bytes | None]:
        """Every change as store bytes (None deletes)."""
        out: dict[bytes, bytes | None] = dict(self._raw)
        for key, value in self._values.items():
            out[key] = None if value is None else orjson.dumps(value)
        return out

    def committed(self) -> None:
        """After a successful store commit: refresh the shared cache with this step's values
        (the steps before it are committed already, so the chain ends here)."""
        for key, value in self._values.items():
            if key[:1] in CACHED_FAMILIES:
                self.cache.put(key, value)
        self.base = None

    def __len__(self) -> int:
        return len(self._values) + len(self._raw)
