"""Elasticsearch rejecting requests (HTTP 429) must not lose a batch.

A busy cluster answers ``429 es_rejected_execution_exception`` when a thread pool's queue
is full, and ``503`` while shards recover after a restart. Both are transient: the
indexer must retry its writes (as it does for connection errors) and never commit past
them. A fault proxy (tests/faults/proxy.py) in front of the private Elasticsearch answers
the next ``_bulk`` requests with 429 — armed once the first half of the stream is
applied, before the second half is published, so the rejections always hit writes the
indexer needs, whatever the machine's speed; afterwards the full state must be exact.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.faults.harness import (
    PrivateServers,
    assert_exact,
    expected_state,
    figures_of,
    full_check,
    open_scenario,
    record_figures,
    stream,
    wait_converged,
    wait_progress,
)
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.timeout(600)

REJECTIONS = 6


async def test_bulk_rejections_mid_stream_lose_nothing(private_servers: PrivateServers) -> None:
    seed = 606
    dataset, records = stream(seed, 3_000)
    expected = expected_state(dataset, records)
    started = time.monotonic()
    async with open_scenario(private_servers, "rejections") as sc:
        proxy = FaultProxy(private_servers.es_url, paths=("/_bulk",))
        half = len(records) // 2
        async with proxy.running():
            sc.wiring.es_url = proxy.url  # only the indexer goes through the proxy
            await sc.topics.publish(records[:half])
            proc = sc.start_indexer("a")
            await wait_progress(sc, half, 90)
            proxy.fail_next(REJECTIONS)
            await sc.topics.publish(records[half:])
            fault_end = time.monotonic()
            converged: float | None = None
            with contextlib.suppress(AssertionError):
                converged = await wait_converged(sc.topics, sc.client, expected, 60)
            report = await full_check(sc, expected)
            _, committed, _ = await sc.topics.lag()
            log = proc.log_text()
            figures = figures_of(records, expected, committed, report, [])
            figures.update(
                injected_429=proxy.injected,
                forwarded=proxy.forwarded,
                handler_errors_logged=log.count("Traceback"),
                converged=converged is not None,
                recovery_s=None if converged is None else round(converged - fault_end, 1),
                scenario_s=round(time.monotonic() - started, 1),
            )
            record_figures("elasticsearch-429", figures)
            assert proc.alive(), log[-3000:]
    assert figures["injected_429"] == REJECTIONS
    assert_exact(report)
