"""The raw `_bulk` ceiling: Elasticsearch alone indexing the final documents of a load.

The indexer's end-to-end load is compared with it (issue 11: >= 0.5x). The documents are
read back from the loaded indices and sent again, already built, into scratch indices
with the same settings (the default `ELASTICSEARCH_REFRESH_INTERVAL` too) and mappings,
with the indexer's default bulk concurrency.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from services.config import ElasticsearchSettings
from services.es.indices import IndexNames, index_settings

ES_URL = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200").rstrip("/")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def _scan(http: httpx.AsyncClient, alias: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Every document of an index as pages of (id, source JSON), via a PIT and search_after."""
    pit = (await http.post(f"{ES_URL}/{alias}/_pit", params={"keep_alive": "2m"})).json()["id"]
    after: list[Any] | None = None
    try:
        for _ in range(100_000):
            body: dict[str, Any] = {
                "size": 5000,
                "pit": {"id": pit, "keep_alive": "2m"},
                "sort": [{"_shard_doc": "asc"}],
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            resp = await http.post(
                f"{ES_URL}/_search",
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
            )
            hits = orjson.loads(resp.content)["hits"]["hits"]
            yield [(h["_id"], orjson.dumps(h["_source"])) for h in hits]
            if len(hits) < 5000:
                break
            after = hits[-1]["sort"]
    finally:
        await http.request("DELETE", f"{ES_URL}/_pit", json={"id": pit})


async def bulk_ceiling(
    names: IndexNames, http: httpx.AsyncClient, indexer_seconds: float, events: int
) -> dict[str, Any]:
    """Raw `_bulk` of the loaded final documents into fresh indices with the same mappings.

    The bulk bodies are spooled to a temporary file while the documents are scanned and
    read back (page cache) as they are sent: at 1M the runner held 19.5 GB when it kept
    them in memory, which starved the servers of page cache.
    """
    with tempfile.TemporaryFile() as spool:
        return await _ceiling(names, http, indexer_seconds, events, spool)


async def _ceiling(
    names: IndexNames, http: httpx.AsyncClient, indexer_seconds: float, events: int, spool: Any
) -> dict[str, Any]:
    _log("  ceiling: raw _bulk of the final documents into scratch indices")
    scratch = IndexNames(names.prefix + "scratch-")
    spans: list[tuple[int, int]] = []  # (offset, length) of each bulk body in the spool
    per_index: dict[str, dict[str, Any]] = {}
    pending: list[bytes] = []

    def flush() -> None:
        body = b"\n".join(pending) + b"\n"
        spans.append((spool.tell(), len(body)))
        spool.write(body)
        pending.clear()

    for alias, target in zip(names.all_aliases(), scratch.all_aliases(), strict=True):
        concrete = scratch.concrete(target)
        resp = await http.put(
            f"{ES_URL}/{concrete}",
            json={
                "settings": index_settings(
                    1, 0, names.mapping_for(alias), ElasticsearchSettings().refresh_interval
                ),
                "mappings": names.mapping_for(alias),
            },
        )
        resp.raise_for_status()
        count = 0
        async for page in _scan(http, alias):
            for doc_id, source in page:
                pending.append(orjson.dumps({"index": {"_index": concrete, "_id": doc_id}}))
                pending.append(source)
                count += 1
                if len(pending) >= 2000:  # 1,000 documents per request
                    flush()
        if pending:
            flush()
        per_index[alias.removeprefix(names.prefix)] = {"docs": count, "scratch": concrete}
    spool.flush()
    total_docs = sum(v["docs"] for v in per_index.values())
    sem = asyncio.Semaphore(2)  # the indexer's default INDEXER_BULK_CONCURRENCY

    async def send(body: bytes) -> None:
        async with sem:
            resp = await http.post(
                f"{ES_URL}/_bulk",
                content=body,
                headers={"content-type": "application/x-ndjson"},
                params={"filter_path": "errors"},
            )
            if resp.status_code != 200 or orjson.loads(resp.content).get("errors"):
                raise RuntimeError(f"bulk failed: {resp.text[:300]}")

    async def send_span(offset: int, length: int) -> None:
        await send(os.pread(spool.fileno(), length, offset))

    t0 = time.perf_counter()
    await asyncio.gather(*(send_span(o, n) for o, n in spans))
    await http.post(f"{ES_URL}/{scratch.prefix}*/_refresh")
    seconds = time.perf_counter() - t0
    # Elasticsearch's own work on each side (before the force merge below): the load's
    # indices carry every write, refresh and merge of the indexer
    work = {
        "bulk": await _work(http, f"{scratch.prefix}*"),
        "load": await _work(http, f"{names.prefix}*", exclude=scratch.prefix),
    }
    # sizes per document on clean, merged indices (for SIZING.md)
    await http.post(
        f"{ES_URL}/{scratch.prefix}*/_forcemerge", params={"max_num_segments": "1"}, timeout=600
    )
    for info in per_index.values():
        stats = (await http.get(f"{ES_URL}/{info['scratch']}/_stats/store,docs")).json()
        prim = stats["indices"][info["scratch"]]["primaries"]
        info["store_bytes"] = prim["store"]["size_in_bytes"]
        info["bytes_per_doc"] = round(prim["store"]["size_in_bytes"] / max(info["docs"], 1), 1)
    loaded = (await http.get(f"{ES_URL}/{names.prefix}*/_stats/store,docs")).json()
    live_store = {
        k: {
            "docs": v["primaries"]["docs"]["count"],
            "deleted_docs": v["primaries"]["docs"]["deleted"],
            "store_bytes": v["primaries"]["store"]["size_in_bytes"],
        }
        for k, v in loaded["indices"].items()
        if not k.startswith(scratch.prefix)
    }
    await http.delete(f"{ES_URL}/{scratch.prefix}*")
    out = {
        "documents": total_docs,
        "seconds": round(seconds, 2),
        "documents_per_s": round(total_docs / seconds),
        "events_per_s_equivalent": round(events / seconds),
        "indexer_vs_bulk": round(seconds / indexer_seconds, 3),
        "indices": per_index,
        "loaded_indices": live_store,
        "elasticsearch_work": work,
    }
    _log(
        f"  _bulk of {total_docs:,} docs in {seconds:.2f}s; "
        f"indexer/bulk = {out['indexer_vs_bulk']:.3f}"
    )
    return out


async def _work(http: httpx.AsyncClient, pattern: str, exclude: str = "") -> dict[str, int]:
    """Operations and milliseconds Elasticsearch spent on the indices matching `pattern`:
    index operations (and their time), deletes, refreshes, merges, flushes."""
    resp = await http.get(f"{ES_URL}/{pattern}/_stats/indexing,refresh,merge,flush")
    total: dict[str, int] = {}
    for name, info in resp.json()["indices"].items():
        if exclude and name.startswith(exclude):
            continue
        prim = info["primaries"]
        for out, (section, field) in {
            "index_ops": ("indexing", "index_total"),
            "index_ms": ("indexing", "index_time_in_millis"),
            "delete_ops": ("indexing", "delete_total"),
            "refreshes": ("refresh", "total"),
            "refresh_ms": ("refresh", "total_time_in_millis"),
            "merges": ("merges", "total"),
            "merge_ms": ("merges", "total_time_in_millis"),
            "merged_docs": ("merges", "total_docs"),
            "flushes": ("flush", "total"),
        }.items():
            total[out] = total.get(out, 0) + int(prim[section][field])
    return total
