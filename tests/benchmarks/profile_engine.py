"""Profile the indexer engine in-process: where does a batch's wall time go?

``python -m tests.benchmarks.profile_engine [--artifacts 5000] [--batch 2000]``
applies a seeded dataset's events (parsed as the indexer parses them) to fresh,
uniquely prefixed indices with `indexer.engine.Engine`, batch by batch, without
Kafka. It prints the engine's own per-phase timings (`BatchStats.seconds`) and a
pyinstrument profile in async mode, which attributes time spent awaiting
Elasticsearch to the awaiting coroutine (the CLI profile of the indexer process
shows it only as `epoll.poll`). The indices are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path

from indexer.engine import Engine
from indexer.sink import Sink
from services.config import ElasticsearchSettings
from services.contract import parse_record
from services.datagen import DatasetScale, generate_dataset
from services.es.admin import drop_indices, ensure_indices
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.events import dataset_records, dependency_order

ES_URL = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200")


async def run(artifacts: int, batch: int, out: Path | None, order: str = "random") -> None:
    from pyinstrument import Profiler

    if not ES_URL.split("://", 1)[-1].startswith(("127.", "localhost")):
        raise SystemExit("profiles run against a local Elasticsearch only")
    dataset = generate_dataset(7, DatasetScale.for_artifacts(artifacts))
    records = dataset_records(dataset, 7)
    if order == "dependency":
        records = dependency_order(records)
    events = [parse_record(e, k, v) for e, k, v in records]
    es = make_es_client(ElasticsearchSettings(url=ES_URL, request_timeout_s=60))
    names = IndexNames(f"prof-{uuid.uuid4().hex[:8]}-")
    await ensure_indices(es, names)
    engine = Engine(Sink(es, names, 1000))
    phases: dict[str, float] = defaultdict(float)
    counters: dict[str, int] = defaultdict(int)
    profiler = Profiler(async_mode="enabled", interval=0.002)
    try:
        t0 = time.perf_counter()
        profiler.start()
        for start in range(0, len(events), batch):
            stats = await engine.apply(events[start : start + batch])
            for name, seconds in stats.seconds.items():
                phases[name] += seconds
            for name in ("artifacts_written", "propagated", "collections_written", "rewrites"):
                counters[name] += getattr(stats, name)
        profiler.stop()
        total = time.perf_counter() - t0
    finally:
        await drop_indices(es, names)
        await es.close()
    print(f"{len(events):,} events in {total:.1f}s = {len(events) / total:,.0f} events/s")
    for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:12s} {seconds:7.2f}s  {seconds / total:6.1%}")
    print("  " + ", ".join(f"{k} {v:,}" for k, v in counters.items()))
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    if out is not None:
        await asyncio.to_thread(out.write_text, text)
        print(f"profile: {out}")
    else:
        print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=2000, help="events per batch")
    parser.add_argument("--order", choices=("random", "dependency"), default="random")
    parser.add_argument("--out", type=Path, help="write the profile here instead of stdout")
    args = parser.parse_args()
    asyncio.run(run(args.artifacts, args.batch, args.out, args.order))


if __name__ == "__main__":
    main()
