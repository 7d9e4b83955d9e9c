"""Prefect 3.9.1 over PostgreSQL, served over HTTP: the benchmark's baseline.

``python -m tests.benchmarks.prefect_server --seed S --artifacts N --port P``
loads the seeded dataset (the same one the benchmark publishes through Kafka)
into a PostgreSQL database with the conformance oracle's loading code
(migrations by Prefect itself, rows by direct SQL), then serves Prefect's own
FastAPI application with uvicorn, one worker, on 127.0.0.1:P.

The database is named after the seed and the scale and is reused when it
already holds the dataset (same artifact count), so a rerun of the benchmark
skips the load; ``--drop`` drops it instead and exits. As in the oracle, the
ASGI lifespan is off: Prefect's background services (scheduler, late runs, ...)
do not run, which only removes noise from the measurement; the artifact
endpoints do not depend on them.

Progress and timings go to stdout as one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import asyncpg
import orjson

from datagen.dataset import GENERATOR_VERSION, DatasetScale, generate_dataset
from tests.conformance.oracle import (
    _app,
    _dispose_engines,
    _prepare_environment,
    _sqlalchemy_url,
    _use_database,
    _with_database,
    load_dataset,
)


def database_name(seed: int, artifacts: int) -> str:
    """The database of one (seed, scale, generator version): reused across benchmark runs
    while the generator gives the same dataset."""
    return f"bench_prefect_s{seed}_n{artifacts}_g{GENERATOR_VERSION}"


def _say(**fields: Any) -> None:
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


async def _existing_count(dsn: str, database: str) -> int | None:
    admin = await asyncpg.connect(dsn)
    try:
        found = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await admin.close()
    if not found:
        return None
    try:
        conn = await asyncpg.connect(_with_database(dsn, database))
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return int(await conn.fetchval("SELECT count(*) FROM artifact"))
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


async def _drop(dsn: str, database: str) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


async def prepare(dsn: str, seed: int, artifacts: int) -> dict[str, Any]:
    """Make sure the database holds the dataset; returns what was done and how long it took."""
    database = database_name(seed, artifacts)
    connection_url = _sqlalchemy_url(_with_database(dsn, database))
    _prepare_environment(connection_url)
    _use_database(connection_url)
    if await _existing_count(dsn, database) == artifacts:
        return {"database": database, "reused": True}
    await _drop(dsn, database)
    started = time.perf_counter()
    dataset = generate_dataset(seed, DatasetScale.for_artifacts(artifacts))
    generated = time.perf_counter()
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(
            f'CREATE DATABASE "{database}" TEMPLATE template0 '
            "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    finally:
        await admin.close()
    from prefect.server.database import provide_database_interface

    await provide_database_interface().create_db()
    migrated = time.perf_counter()
    conn = await asyncpg.connect(_with_database(dsn, database))
    try:
        await load_dataset(conn, dataset)
    finally:
        await conn.close()
    loaded = time.perf_counter()
    await _dispose_engines(connection_url)
    return {
        "database": database,
        "reused": False,
        "generate_s": round(generated - started, 2),
        "migrate_s": round(migrated - generated, 2),
        "load_s": round(loaded - migrated, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--artifacts", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn", default=os.environ.get("POSTGRES_DSN", ""))
    parser.add_argument("--drop", action="store_true", help="drop the database and exit")
    args = parser.parse_args(argv)
    if not args.dsn:
        sys.exit("POSTGRES_DSN (or --dsn) is required")
    if args.drop:
        asyncio.run(_drop(args.dsn, database_name(args.seed, args.artifacts)))
        _say(event="dropped", database=database_name(args.seed, args.artifacts))
        return
    info = asyncio.run(prepare(args.dsn, args.seed, args.artifacts))
    _say(event="prepared", **info)

    import uvicorn

    _say(event="serving", port=args.port)
    uvicorn.run(
        _app(), host="127.0.0.1", port=args.port, lifespan="off", log_level="warning", workers=1
    )


if __name__ == "__main__":
    main()
