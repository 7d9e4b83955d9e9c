"""Get/put/scan costs of the candidate state stores, as the indexer uses them.

`python -m tests.benchmarks.store_costs [N]`: N keys (default 200,000) of ~300-byte JSON
values in 3 partitions, written in atomic batches of 5,000 with a synced commit per batch
(what a step does), then N random point reads and a 50,000-key prefix scan. Candidates:
RocksDB (rocksdict, the store the indexer uses), LMDB (py-lmdb, synced commits) and a plain
dict (the floor). Figures feed docs/adr/0005-indexer-state-store.md.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import orjson

from indexer.store import RocksStore

BATCH = 5_000


def _value() -> bytes:
    return orjson.dumps(
        {
            "id": "x" * 36,
            "key": "k-123",
            "type": "table",
            "description": "d" * 100,
            "data": {"rows": [[1, 2, 3]] * 10},
            "created_us": 123,
            "v": 5,
        }
    )


def _time(fn: Callable[[], None], count: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / count * 1e6


def rocks(keys: list[bytes], value: bytes) -> dict[str, float]:
    path = tempfile.mkdtemp(prefix="store-rocks-")
    try:
        store = RocksStore(path, sync=True)

        def put() -> None:
            for i in range(0, len(keys), BATCH):
                store.commit(dict.fromkeys(keys[i : i + BATCH], value))

        shuffled = random.sample(keys, len(keys))
        out = {"put": _time(put, len(keys))}
        out["get"] = _time(lambda: [store.get(k) for k in shuffled], len(keys))
        scan_n = min(50_000, len(keys) // 3)

        def scan() -> None:
            for n, _ in enumerate(store.scan(b"A|001|")):
                if n >= scan_n:
                    break

        out["scan"] = _time(scan, scan_n)
        store.close()
        return out
    finally:
        shutil.rmtree(path, ignore_errors=True)


def lmdb_store(keys: list[bytes], value: bytes) -> dict[str, float]:
    import lmdb

    path = tempfile.mkdtemp(prefix="store-lmdb-")
    try:
        env = lmdb.open(path, map_size=8 << 30, sync=True)

        def put() -> None:
            for i in range(0, len(keys), BATCH):
                with env.begin(write=True) as tx:
                    for k in keys[i : i + BATCH]:
                        tx.put(k, value)

        shuffled = random.sample(keys, len(keys))
        out = {"put": _time(put, len(keys))}

        def get() -> None:
            with env.begin() as tx:
                for k in shuffled:
                    tx.get(k)

        out["get"] = _time(get, len(keys))
        scan_n = min(50_000, len(keys) // 3)

        def scan() -> None:
            with env.begin() as tx:
                cursor = tx.cursor()
                cursor.set_range(b"A|001|")
                for n, _ in enumerate(cursor):
                    if n >= scan_n:
                        break

        out["scan"] = _time(scan, scan_n)
        env.close()
        return out
    finally:
        shutil.rmtree(path, ignore_errors=True)


def plain_dict(keys: list[bytes], value: bytes) -> dict[str, float]:
    data: dict[bytes, bytes] = {}

    def put() -> None:
        for k in keys:
            data[k] = value

    shuffled = random.sample(keys, len(keys))
    return {
        "put": _time(put, len(keys)),
        "get": _time(lambda: [data.get(k) for k in shuffled], len(keys)),
        "scan": float("nan"),
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    random.seed(1)
    keys = [b"A|%03d|" % (i % 3) + os.urandom(16).hex().encode() for i in range(count)]
    value = _value()
    print(f"{count:,} keys, {len(value)}-byte values, synced commits of {BATCH:,} puts")
    print(f"{'store':<10}{'put µs':>10}{'get µs':>10}{'scan µs/key':>14}")
    for name, fn in (("rocksdb", rocks), ("lmdb", lmdb_store), ("dict", plain_dict)):
        got = fn(keys, value)
        print(f"{name:<10}{got['put']:>10.2f}{got['get']:>10.2f}{got['scan']:>14.2f}")


if __name__ == "__main__":
    main()
