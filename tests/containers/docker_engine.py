"""A Docker engine for the container tests: the one that answers, or a `dockerd` started here.

On these machines no engine runs by default; as root, ``dockerd`` (Debian's ``docker.io``) is
started with no default bridge and no iptables rules (containers use host networking), on the
overlay2 storage driver, or vfs where overlay2 cannot start (vfs copies the whole image for
every build step: the app image builds in about 2 minutes on overlay2, 13 on vfs). An engine
started here is stopped again (by its pid) when the session ends. ``DOCKERD_ARGS`` replaces
the arguments.
Nothing here skips: an engine that cannot be reached or started fails the test that needs it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DOCKERD_ARGS = (
    "--storage-driver=overlay2 --bridge=none --iptables=false",
    "--storage-driver=vfs --bridge=none --iptables=false",
)
HINT = (
    "install Debian's docker.io and debootstrap (apt-get install docker.io debootstrap) and run "
    "as root, or start a Docker engine yourself"
)


class DockerUnavailableError(RuntimeError):
    """No engine answers and none could be started."""


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a non-zero exit raises with its output when `check`."""
    proc = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {shlex.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def engine_answers() -> bool:
    """True when the docker CLI reaches an engine."""
    if shutil.which("docker") is None:
        return False
    try:
        return (
            docker("info", "--format", "{{.ServerVersion}}", timeout=15, check=False).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


class Dockerd:
    """A `dockerd` this session started, stopped by its pid."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start dockerd with the first argument set it accepts."""
        dockerd = shutil.which("dockerd")
        if dockerd is None or shutil.which("docker") is None:
            raise DockerUnavailableError(f"no Docker engine answers and dockerd is missing: {HINT}")
        if os.geteuid() != 0:
            raise DockerUnavailableError(f"no Docker engine answers and dockerd needs root: {HINT}")
        choices = [os.environ["DOCKERD_ARGS"]] if "DOCKERD_ARGS" in os.environ else DOCKERD_ARGS
        failures = []
        for args in choices:
            try:
                self._start(dockerd, shlex.split(args))
                return
            except DockerUnavailableError as exc:
                failures.append(f"dockerd {args}: {exc}")
        raise DockerUnavailableError("\n".join(failures))

    def _start(self, dockerd: str, args: list[str], timeout: float = 60) -> None:
        """Start dockerd and wait until the CLI reaches it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [dockerd, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerUnavailableError(
                    f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            if engine_answers():
                return
            time.sleep(0.5)
        self.stop()
        raise DockerUnavailableError(
            f"dockerd did not answer in {timeout:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only the process started here."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker engine: the running one, else a dockerd started (and stopped) here."""
    if engine_answers():
        yield
        return
    dockerd = Dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    try:
        dockerd.start()
    except DockerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield
    finally:
        dockerd.stop()
