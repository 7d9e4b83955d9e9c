"""Test helper: poll for a condition with a bounded timeout (never a fixed sleep), and start
and stop the service's own processes.

`wait_for` returns the last value it saw, met or not, so the caller's assertion shows what
the system looked like when time ran out.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    seconds: float,
    interval: float = 0.3,
) -> T:
    """Call `probe` until `done(value)` holds or `seconds` passed; return the last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


async def wait_answer(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], want: Any, seconds: float
) -> Any:
    """The JSON answer of `POST path` once it equals `want`, or the last one after `seconds`."""

    async def answer() -> Any:
        return (await client.post(path, json=body)).json()

    return await wait_for(answer, lambda got: bool(got == want), seconds, interval=0.5)


async def terminate(procs: list[asyncio.subprocess.Process], seconds: float = 60) -> None:
    """SIGTERM every process still running, then wait for each to exit (SIGKILL after
    `seconds`)."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def start_cli(env: dict[str, str], log: Path, *args: str) -> asyncio.subprocess.Process:
    """`python -m artifact_search.cli ARGS` from the repository, its output appended to `log`
    (a file, never a pipe nobody reads: a chatty process would block on a full pipe)."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "artifact_search.cli",
            *args,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
