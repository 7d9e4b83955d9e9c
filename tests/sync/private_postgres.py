"""A private PostgreSQL cluster (wal_level=logical) that a test may stop and start.

The shared server (POSTGRES_DSN) is never restarted: a test that needs a PostgreSQL
restart initdb's its own cluster into a temporary directory on a free port, with the
binaries deploy/local/servers.sh would use (PG_BIN, else the newest
/usr/lib/postgresql/*/bin, else `pg_config --bindir`, else `initdb` on PATH), run as the
`postgres` system user when the test runs as root (PostgreSQL refuses root), as
servers.sh does. Prefect's schema is copied from the migrated template on the shared
server with `pg_dump --schema-only` (seconds, instead of Prefect's migrations).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.sync.test_cdc_bridge import free_port


def pg_bindir() -> Path:
    """Where initdb, pg_ctl, pg_dump and psql are (servers.sh's rule)."""
    if value := os.environ.get("PG_BIN"):
        return Path(value)
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout
        if (Path(out.strip()) / "initdb").exists():
            return Path(out.strip())
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BIN")
    return Path(initdb).parent


class PrivatePostgres:
    """One throwaway cluster: `start()`, `stop()` (fast shutdown), `destroy()`."""

    def __init__(self) -> None:
        self.bin = pg_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sync-private-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgresql.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(
            self._as_user(*argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            start_new_session=True,  # a Ctrl-C of the test does not reach the server
        )
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stdout.decode()[-2000:]}\n{tail}")

    def init(self) -> None:
        """initdb (C collation, UTF8, trust auth), owned by the server's user."""
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "--locale=C",
            "--encoding=UTF8",
            "--auth=trust",
            "--username=postgres",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\nunix_socket_directories = ''\nlog_min_messages = warning\n")

    def start(self) -> None:
        """Start (pg_ctl -w: returns once it accepts connections)."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c wal_level=logical "
            "-c max_replication_slots=10 -c max_wal_senders=10"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop: `fast` disconnects every client and writes a shutdown checkpoint."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def copy_schema(self, source_dsn: str, database: str) -> None:
        """Create `database` here with the schema (no rows) of the database at `source_dsn`."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), database)
        dump = subprocess.run(
            [
                str(self.bin / "pg_dump"),
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                source_dsn,
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        target = self.dsn.rsplit("/", 1)[0] + f"/{database}"
        subprocess.run(
            [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", target],
            input=dump.stdout,
            capture_output=True,
            check=True,
            timeout=120,
        )

    def destroy(self) -> None:
        """Stop (immediately) if running, and delete the cluster's files."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
