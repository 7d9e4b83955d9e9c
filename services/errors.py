"""One error tree for the whole project.

Pure code raises these; the edges map them to outcomes::

    ServiceError
    +-- TranslationError        a filter the translator cannot express   -> HTTP 422
    +-- NotFoundError           unknown artifact id or key               -> HTTP 404
    +-- BackendUnavailableError Elasticsearch/Kafka unreachable           -> HTTP 503 / retry
    +-- PoisonEventError        an event that can never be applied       -> dead-letter, commit
    +-- TransientError          worth retrying with backoff              -> retry, pause consumer
    +-- PermanentError          configuration or mapping is wrong        -> alert, stop
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error this project raises on purpose."""


class TranslationError(ServiceError, ValueError):
    """A filter could not be translated into an Elasticsearch query."""


class NotFoundError(ServiceError):
    """The requested artifact or collection does not exist."""


class BackendUnavailableError(ServiceError):
    """A backing service (Elasticsearch, Kafka) cannot be reached right now."""


class PoisonEventError(ServiceError):
    """An event that will never apply: it goes to the dead-letter topic.

    ``reason`` is a short machine-readable code, ``detail`` a human sentence.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransientError(ServiceError):
    """A failure that may succeed when retried (429, 5xx, timeouts)."""


class PermanentError(ServiceError):
    """A failure that retrying cannot fix; the process should stop loudly."""
