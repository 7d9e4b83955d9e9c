"""Fixtures of the container tier: a Docker engine and the app image built on this machine."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.containers.docker_engine import docker_engine  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "deploy" / "docker" / "build.sh"


@pytest.fixture(scope="session")
def app_image(docker_engine: None) -> str:  # noqa: F811  (the fixture above)
    """The app image, built by deploy/docker/build.sh from the local Debian base (reused when
    present) and a wheelhouse: the path of a machine without a public registry."""
    image = os.environ.get("TEST_APP_IMAGE", "artifact-search:test")
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(BUILD_SH), "app"],
        env={**os.environ, "IMAGE": image},
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{BUILD_SH} app exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-5000:]}",
            pytrace=False,
        )
    print(f"[containers] image {image} ready in {time.monotonic() - started:.0f}s:\n{proc.stderr}")
    return image
