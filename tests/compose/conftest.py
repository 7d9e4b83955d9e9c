"""The compose tier (`make compose-smoke`, not in `make test`): the Docker engine fixture of the
container tier."""

from tests.containers.docker_engine import docker_engine  # noqa: F401  (a fixture)
