"""The alerts worker's composition root: settings in, worker and webhook dispatcher wired.

`artifact-search alerts` runs `AlertsService.run()`: it creates the indices and the three
topics it uses if missing (the change feed, the alert topic and its dead letters), then
runs the worker (alerts/worker.py) and, unless `ALERTS_WEBHOOKS=false`, the webhook
dispatcher (alerts/webhooks.py) until SIGTERM/SIGINT. The indexer must run with
`INDEXER_PUBLISH_CHANGES=true` to feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import httpx

from alerts.evaluator import Evaluator
from alerts.ledger import Ledger
from alerts.searches import SavedSearchStore
from alerts.webhooks import WebhookDispatcher
from alerts.worker import AlertWorker
from services.config import AlertsSettings, ElasticsearchSettings, KafkaSettings
from services.es.admin import ensure_indices
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.topics import ensure_topics

log = logging.getLogger("alerts")


class AlertsService:
    """One alerts worker process (scale out: more processes in the same consumer group)."""

    def __init__(
        self, kafka: KafkaSettings, es_settings: ElasticsearchSettings, settings: AlertsSettings
    ) -> None:
        self.kafka = kafka
        self.es_settings = es_settings
        self.settings = settings
        self.names = IndexNames(es_settings.index_prefix)
        self.es = make_es_client(es_settings)
        self.store = SavedSearchStore(self.es, self.names.saved_searches)
        self.http = httpx.AsyncClient(follow_redirects=False)
        self.worker = AlertWorker(
            kafka,
            settings,
            Evaluator(
                self.es, self.names.artifacts, self.names.collections, settings.visibility_wait_s
            ),
            self.store,
            Ledger(self.es, self.names.alert_ledger, settings.claim_timeout_s),
        )
        self.webhooks = (
            WebhookDispatcher(kafka, settings, self.store, self.http) if settings.webhooks else None
        )
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()

    async def start(self) -> None:
        """Create what is missing, then start the consumers."""
        await ensure_indices(
            self.es,
            self.names,
            self.es_settings.number_of_shards,
            self.es_settings.number_of_replicas,
        )
        k = self.kafka
        await ensure_topics(k, [k.changes_topic, k.alerts_topic, k.alerts_dlq_topic])
        await self.worker.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        self.started.set()

    async def serve(self) -> None:
        """Run until `stop()`; a failure of either loop stops both and is raised."""
        loops = [asyncio.create_task(self.worker.run(self.stopping), name="alerts-worker")]
        if self.webhooks is not None:
            loops.append(asyncio.create_task(self.webhooks.run(self.stopping), name="webhooks"))
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self.stopping.set()
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def stop(self) -> None:
        """Ask both loops to stop after their current batch."""
        self.stopping.set()

    async def close(self) -> None:
        """Stop consumers and producers, close the clients."""
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.worker.stop()
        await self.http.aclose()
        await self.es.close()

    async def run(self) -> None:
        """The command: start, serve until a signal, close."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self.start()
            log.info("alerts worker started")
            await self.serve()
        finally:
            await self.close()
