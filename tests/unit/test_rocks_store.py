"""`indexer.store.RocksStore` on a temporary directory (RocksDB is embedded: no server).

The store's table options — a bloom filter on every table, the block cache size — must
hold for a store reopened after a restart, not only for the one that created it:
rocksdict applies the options it is given only to column families it creates.
"""

from __future__ import annotations

from pathlib import Path

from indexer.store import RocksStore


def _newest_options(path: Path) -> str:
    newest = max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    return newest.read_text()


def test_a_reopened_store_keeps_its_bloom_filter_and_block_cache(tmp_path: Path) -> None:
    path = tmp_path / "state"
    store = RocksStore(path, sync=False, cache_mb=48)
    store.commit({b"a1": b"x", b"a2": b"y"})
    store.close()
    for _ in range(2):  # each open writes the options in effect to a new OPTIONS file
        store = RocksStore(path, sync=False, cache_mb=48)
        assert store.get(b"a1") == b"x" and store.get(b"never") is None
        assert "filter_policy=bloomfilter" in _newest_options(path)
        assert store._db.property_int_value("rocksdb.block-cache-capacity") == 48 * 1024 * 1024
        store.commit({b"a3": b"z"})
        store.close()
