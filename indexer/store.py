"""The indexer's embedded state store: ordered bytes keys, atomic batch commits.

Two implementations of the `Store` interface (indexer/state.py):

- `RocksStore` — RocksDB through `rocksdict`, the store of a running indexer. Every
  commit is one `WriteBatch` (atomic), written with a synced WAL, so state and the
  positions saved with it survive a SIGKILL and a power loss together
  (docs/adr/0005-indexer-state-store.md has the measured get/put costs and why not LMDB).
- `MemoryStore` — a dict with sorted scans, for unit tests and throwaway runs.

The store is only ever changed by `commit`: a step reads the committed state (plus its own
overlay, see `indexer/state.py`) and writes everything it changed, positions included, in
one batch.
"""

from __future__ import annotations

import bisect
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from indexer.state import Store

__all__ = ["MemoryStore", "RocksStore", "Store"]


def _options(cache_mb: int) -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(cache_mb * 1024 * 1024))
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    options.increase_parallelism(2)
    return options


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return None


class MemoryStore:
    """A `Store` in a dict; scans sort the keys they need (fine for tests)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = None
        self.commits = 0

    def get(self, key: bytes) -> bytes | None:
        """See `Store.get`."""
        return self.data.get(key)

    def scan(
        self, prefix: bytes, reverse: bool = False, after: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """See `Store.scan`."""
        if self._sorted is None:
            self._sorted = sorted(self.data)
        keys = self._sorted
        start = bisect.bisect_left(keys, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(keys, after))
        end_key = _prefix_end(prefix)
        stop = len(keys) if end_key is None else bisect.bisect_left(keys, end_key)
        chosen = keys[start:stop]
        for key in reversed(chosen) if reverse else chosen:
            yield key, self.data[key]

    def commit(self, changes: Mapping[bytes, bytes | None]) -> None:
        """See `Store.commit`."""
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self._sorted = None
        self.commits += 1

    def close(self) -> None:
        """Nothing to release."""


class RocksStore:
    """A `Store` on RocksDB (one directory per indexer replica)."""

    def __init__(self, path: str | Path, *, sync: bool = True, cache_mb: int = 64) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # rocksdict applies the options given only to column families it creates: an
        # existing store reopened without them for its "default" family fell back to an
        # 8 MB block cache and no bloom filters (every lookup read a block of every level;
        # gets of a 1M-artifact store took 14-20 µs instead of 7-8 after a restart)
        options = _options(cache_mb)  # one block cache, shared by the family and the DB
        self._db = Rdict(str(self.path), options, column_families={"default": options})
        writes = WriteOptions()
        writes.sync = sync
        self._db.set_write_options(writes)
        self._read = ReadOptions()

    def get(self, key: bytes) -> bytes | None:
        """See `Store.get`."""
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def scan(
        self, prefix: bytes, reverse: bool = False, after: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """See `Store.scan`."""
        it = self._db.iter(self._read)
        if reverse:
            end = _prefix_end(prefix)
            if end is None:
                it.seek_to_last()
            else:
                it.seek_for_prev(end)
                if it.valid() and it.key() == end:
                    it.prev()
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    return
                yield key, it.value()
                it.prev()
        else:
            it.seek(prefix if after is None or after < prefix else after)
            if after is not None and it.valid() and it.key() == after:
                it.next()
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    return
                yield key, it.value()
                it.next()

    def commit(self, changes: Mapping[bytes, bytes | None]) -> None:
        """See `Store.commit`: one atomic `WriteBatch`, synced when `sync`."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)

    def close(self) -> None:
        """Flush and close RocksDB."""
        self._db.close()

    @staticmethod
    def destroy(path: str | Path) -> None:
        """Delete a store directory (a replica that must rebuild from the topics)."""
        shutil.rmtree(path, ignore_errors=True)
