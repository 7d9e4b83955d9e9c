"""Test helpers for the one-URL test: real processes on free 127.0.0.1 ports.

`Nginx` serves deploy/proxy/one-url.conf.template, rendered the way the nginx image's
entrypoint renders it (envsubst of the named variables only), with Debian's nginx;
`PrefectServer` is `prefect server start` (Prefect 3.9.1, its services and UI) on a
PostgreSQL database of its own; `Process` runs this project's CLI (`api`, `indexer`).
Each waits for its server to answer before returning, with a bounded wait, and stops
what it started on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "proxy" / "one-url.conf.template"
TEMPLATE_VARIABLES = ("PREFECT_UPSTREAM", "SEARCH_UPSTREAM", "PROXY_LISTEN")


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_template(text: str, values: Mapping[str, str]) -> str:
    """``${NAME}`` replaced for the template's variables only, as the image's envsubst
    step does (nginx's own ``$variables`` stay); a variable left unset is an error."""
    missing = set(TEMPLATE_VARIABLES) - set(values)
    if missing:
        raise KeyError(f"template variables without a value: {sorted(missing)}")
    out = re.sub(
        r"\$\{(" + "|".join(TEMPLATE_VARIABLES) + r")\}", lambda m: values[m.group(1)], text
    )
    if leftover := re.findall(r"\$\{\w+\}", out):
        raise ValueError(f"unknown template variables: {leftover}")
    return out


def nginx_binary() -> str:
    """Debian's nginx; without it the test fails under CI and is skipped elsewhere."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        message = "nginx is not installed (Debian: apt-get install nginx)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def wait_for_http(url: str, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    """Until ``url`` answers 200; fails early when ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer {url} within {timeout:.0f} s")
        time.sleep(0.3)


class Process:
    """A child process whose output goes to a log file; SIGTERM, then SIGKILL, on exit."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        """The end of the process's log, for failure messages."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any Prefect or service setting, plus ``extra``."""
    prefixes = ("PREFECT_", "KAFKA_", "ELASTICSEARCH_", "INDEXER_", "QUERY_", "BACKFILL_", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


class PrefectServer(Process):
    """``prefect server start`` on ``database_url`` (SQLAlchemy asyncpg URL)."""

    def __init__(self, database_url: str, home: Path, log: Path) -> None:
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        env = clean_env(
            PREFECT_HOME=str(home),
            PREFECT_API_DATABASE_CONNECTION_URL=database_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        )
        prefect = [sys.executable, "-m", "prefect"]
        super().__init__(
            "prefect server",
            [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env,
            log,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrefectServer:
        proc = self.start()
        try:
            # a fresh database is migrated first: on 2 busy cores this takes a minute or two
            wait_for_http(f"{self.url}/api/health", proc, self.name, 240)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Nginx(Process):
    """Debian's nginx serving the one-URL template in the foreground."""

    def __init__(self, directory: Path, prefect_port: int, search_port: int) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.access_log = directory / "access.log"
        server = render_template(
            TEMPLATE.read_text(),
            {
                "PREFECT_UPSTREAM": f"127.0.0.1:{prefect_port}",
                "SEARCH_UPSTREAM": f"127.0.0.1:{search_port}",
                "PROXY_LISTEN": f"127.0.0.1:{self.port}",
            },
        )
        (directory / "one-url.conf").write_text(server)
        temp = "\n".join(
            f"  {kind}_temp_path {directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # only the frame around the server block is the test's: a process, its files
        user = "user root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"daemon off;\n{user}worker_processes 1;\npid {directory / 'nginx.pid'};\n"
            f"error_log {directory / 'error.log'} warn;\n"
            "events { worker_connections 512; }\n"
            f"http {{\n{temp}\n  include {directory / 'one-url.conf'};\n}}\n"
        )
        self.directory = directory
        binary = nginx_binary()
        args = [binary, "-p", str(directory), "-e", str(directory / "error.log")]
        super().__init__("nginx", [*args, "-c", str(directory / "nginx.conf")], {}, self.access_log)
        check = subprocess.run(
            [*args, "-t", "-c", str(directory / "nginx.conf")], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[str]:
        """The access log so far (format one_url: ... "$request" status bytes upstream ...)."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def __enter__(self) -> Nginx:
        self.start()
        deadline = time.monotonic() + 30
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.directory / 'error.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError("nginx did not listen within 30 s")
            time.sleep(0.1)

    def __exit__(self, *_: object) -> None:
        self.stop()
