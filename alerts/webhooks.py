"""The webhook dispatcher: alerts in (the alert topic), HTTP POSTs out, dead letters.

A consumer of the alert topic in its own group (`<ALERTS_GROUP_ID>.webhooks`), so a slow or
failing receiver never holds up the alerts themselves. Each alert of a saved search with a
webhook is POSTed (the alert message as JSON; headers `Idempotency-Key` and
`X-Alert-Id` = the alert id). A delivery that fails — a connection error, a timeout or any
answer other than 2xx — is retried with exponential backoff (tenacity) up to
`ALERTS_WEBHOOK_ATTEMPTS` attempts, then the alert goes to the alert dead-letter topic
(`KAFKA_TOPIC_ALERTS_DLQ`) with headers saying why. A webhook whose host
`ALERTS_WEBHOOK_ALLOWED_HOSTS` does not allow (alerts/egress.py) is never called: its alerts
go to the dead-letter topic at once (`dlq.reason` = `webhook-not-allowed`). Offsets are
committed after every alert of a batch was delivered or dead-lettered: deliveries are
at-least-once, and the receiver deduplicates by the alert id.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from aiokafka.errors import KafkaError
from elasticsearch import ApiError, TransportError
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_exponential_jitter,
)

from alerts import metrics
from alerts.egress import parse_allowed_hosts, webhook_refusal
from alerts.kafka_io import ConsumeProduce, Record
from alerts.model import AlertMessage, SavedSearch
from alerts.searches import SavedSearchStore
from services.config import AlertsSettings, KafkaSettings
from services.errors import BackendUnavailableError

log = logging.getLogger("alerts.webhooks")


class WebhookFailedError(Exception):
    """One delivery attempt failed (retried, then dead-lettered)."""


class WebhookDispatcher:
    """POSTs alerts to their saved search's webhook (see the module docstring)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: AlertsSettings,
        store: SavedSearchStore,
        http: httpx.AsyncClient,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.store = store
        self.http = http
        self.io = ConsumeProduce(
            kafka, kafka.alerts_topic, f"{settings.group_id}.webhooks", settings.max_batch
        )
        self.allowed_hosts = parse_allowed_hosts(settings.webhook_allowed_hosts)
        self.delivered = 0
        self.dead_lettered = 0

    async def start(self) -> None:
        """Start the dead-letter producer and the alert-topic consumer."""
        await self.io.start()

    async def stop(self) -> None:
        """Stop (an unfinished batch is redelivered)."""
        await self.io.stop()

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver batches until `stopping` is set."""
        while not stopping.is_set():
            records = await self.io.next_batch()
            if not records:
                continue
            searches = await self._searches(records)
            await asyncio.gather(*(self._deliver(r, searches) for r in records))
            await self.io.commit()

    async def _searches(self, records: list[Record]) -> dict[str, SavedSearch | None]:
        """The current saved search of each alert's search id (its webhook may have changed)."""
        ids = {r.key.decode() for r in records if r.key}
        out: dict[str, SavedSearch | None] = {}
        for search_id in ids:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(
                    (BackendUnavailableError, ApiError, TransportError, OSError)
                ),
                wait=wait_exponential_jitter(
                    initial=self.settings.retry_initial_s, max=self.settings.retry_max_s
                ),
                reraise=True,
            ):
                with attempt:
                    out[search_id] = await self.store.get(search_id)
        return out

    async def _deliver(self, record: Record, searches: dict[str, SavedSearch | None]) -> None:
        try:
            alert = AlertMessage.model_validate_json(record.value or b"")
        except ValidationError:
            log.error("not an alert at %s:%d; skipped", record.topic, record.offset)
            return
        search = searches.get(alert.saved_search.id)
        if search is None or search.webhook is None:
            return  # deleted meanwhile, or no webhook
        url = str(search.webhook.url)
        refused = webhook_refusal(url, self.allowed_hosts)
        if refused is not None:  # saved before the allow-list changed, or written around it
            metrics.WEBHOOKS.labels("refused").inc()
            log.warning("webhook of saved search %s refused: %s", search.id, refused)
            await self._dead_letter(record, alert, refused, reason=b"webhook-not-allowed", tries=0)
            return
        detail = ""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.webhook_attempts),
                wait=wait_exponential(
                    multiplier=self.settings.webhook_backoff_initial_s,
                    max=self.settings.webhook_backoff_max_s,
                ),
                retry=retry_if_exception_type(WebhookFailedError),
                reraise=True,
            ):
                with attempt:
                    await self._post(url, alert.alert_id, record.value)
            metrics.WEBHOOKS.labels("delivered").inc()
            self.delivered += 1
            return
        except WebhookFailedError as exc:
            detail = str(exc)
        metrics.WEBHOOKS.labels("dead_lettered").inc()
        log.warning(
            "webhook of saved search %s failed %d times (%s): alert %s dead-lettered",
            search.id,
            self.settings.webhook_attempts,
            detail,
            alert.alert_id,
        )
        await self._dead_letter(
            record, alert, detail, reason=b"webhook", tries=self.settings.webhook_attempts
        )

    async def _post(self, url: str, alert_id: str, body: bytes) -> None:
        try:
            resp = await self.http.post(
                url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": alert_id,
                    "X-Alert-Id": alert_id,
                },
                timeout=self.settings.webhook_timeout_s,
            )
        except httpx.HTTPError as exc:
            metrics.WEBHOOKS.labels("failed_attempt").inc()
            raise WebhookFailedError(type(exc).__name__) from exc
        if not 200 <= resp.status_code < 300:
            metrics.WEBHOOKS.labels("failed_attempt").inc()
            raise WebhookFailedError(f"HTTP {resp.status_code}")

    async def _dead_letter(
        self, record: Record, alert: AlertMessage, detail: str, reason: bytes, tries: int
    ) -> None:
        producer = self.io.producer
        headers = [
            ("dlq.reason", reason),
            ("dlq.detail", detail.encode()[:2000]),
            ("dlq.attempts", str(tries).encode()),
            ("dlq.saved_search_id", alert.saved_search.id.encode()),
            ("dlq.topic", record.topic.encode()),
            ("dlq.partition", str(record.partition).encode()),
            ("dlq.offset", str(record.offset).encode()),
        ]
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(KafkaError),
            wait=wait_exponential_jitter(
                initial=self.settings.retry_initial_s, max=self.settings.retry_max_s
            ),
            reraise=True,
        ):
            with attempt:
                await producer.send_and_wait(
                    self.kafka.alerts_dlq_topic,
                    key=alert.alert_id.encode(),
                    value=record.value,
                    headers=headers,
                )
        self.dead_lettered += 1
