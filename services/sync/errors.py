"""The errors of `sync-prefect` that stop it with a message (both modes)::

PermanentError (services/errors.py)
+-- SyncSetupError      the source refuses what the bridge needs; the message says how
    +-- SlotMissingError    (CDC) the replication slot is gone: changes may be lost
    +-- PrefectAuthError    (API) Prefect refused the credentials
"""

from __future__ import annotations

from services.errors import PermanentError


class SyncSetupError(PermanentError):
    """The source refuses what the bridge needs; the message says how to fix it."""
