"""Fixtures of the fault suite: PRIVATE Kafka and Elasticsearch, one scenario's wiring.

The scenarios stop and restart servers, so they never use the shared ones (the root
conftest's ``kafka_bootstrap`` / ``elasticsearch_url``): ``private_servers`` starts its
own Kafka and Elasticsearch with deploy/local/servers.sh, in ``.local/faults`` on ports
19092/19093 and 19200/19300 (env ``FAULTS_KAFKA_PORT``, ``FAULTS_KAFKA_CONTROLLER_PORT``,
``FAULTS_ES_PORT``, ``FAULTS_ES_TRANSPORT_PORT``), and stops them at the end of the session
(``FAULTS_KEEP_SERVERS=1`` keeps them for the next run). Servers it finds stopped are
reset first, so every session starts from empty data.

Two sessions in the same checkout would share those servers (and one would stop them under
the other): the fixture holds an exclusive lock on ``.local/faults/.lock`` for the whole
session and waits for it at most ``FAULTS_LOCK_WAIT_S`` seconds (default 300).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import IO

import pytest

from tests.faults.harness import FAULTS_DIR, FIGURES_FILE, LOG_DIR, TARGETS, PrivateServers


def _try_lock(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _session_lock() -> Iterator[IO[str]]:
    """Exclusive use of the private servers by this session (released if the process dies)."""
    FAULTS_DIR.mkdir(parents=True, exist_ok=True)
    wait_s = float(os.environ.get("FAULTS_LOCK_WAIT_S", "300"))
    with (FAULTS_DIR / ".lock").open("a+") as fh:
        deadline = time.monotonic() + wait_s
        while not _try_lock(fh):
            if time.monotonic() > deadline:
                fh.seek(0)
                pytest.fail(
                    f"another fault-suite session holds {FAULTS_DIR / '.lock'} "
                    f"({fh.read().strip()}); waited {wait_s:.0f}s",
                    pytrace=False,
                )
            time.sleep(1)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def private_servers() -> Iterator[PrivateServers]:
    """The fault suite's own Kafka and Elasticsearch (never the shared ones)."""
    with _session_lock():
        yield from _servers()


def _servers() -> Iterator[PrivateServers]:
    servers = PrivateServers()
    # figures and indexer logs of the previous session go
    FIGURES_FILE.unlink(missing_ok=True)
    for old in LOG_DIR.glob("*.log") if LOG_DIR.exists() else ():
        old.unlink()
    stopped = [t for t in TARGETS if not servers.running(t)]
    if stopped:
        servers.run("reset", *stopped)
    servers.run("start", *TARGETS)
    try:
        yield servers
    finally:
        if os.environ.get("FAULTS_KEEP_SERVERS") != "1":
            servers.run("stop", *TARGETS)
