"""A fresh database with Message DB installed by its own install script, for one test session.

Message DB's SQL comes from its npm package (``make message-db`` puts it under
``.cache/message-db``); none of it is copied into this repository. Its ``install.sh`` runs
``psql`` on its files in its own order; we create the database ourselves
(``CREATE_DATABASE=off``). The script creates the cluster-wide role ``message_store`` in a
``DO`` block that ignores ``duplicate_object``, so a second install on the same server does
not fail on the role; installs are serialized by an advisory lock so that two sessions
installing at once do not race on creating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.conftest import PG_DSN, require_postgres

ROOT = Path(__file__).resolve().parents[2]
MESSAGE_DB = Path(
    os.environ.get(
        "PROJECTIONIST_MESSAGE_DB_DIR",
        ROOT / ".cache/message-db/node_modules/@eventide/message-db/database",
    )
)
INSTALL_LOCK = 0x6D64_6269  # serializes installs on one server (in its postgres database)


def database_url(name: str) -> str:
    parts = urlsplit(PG_DSN)
    return urlunsplit(parts._replace(path=f"/{name}"))


def script_environment(database: str) -> dict[str, str]:
    """libpq's variables for the script's ``psql`` calls (one of them names the database
    ``postgres`` on its own, so host, port and user come from the environment)."""
    parts = urlsplit(PG_DSN)
    env = dict(os.environ, DATABASE_NAME=database, CREATE_DATABASE="off")
    env.update(PGHOST=parts.hostname or "127.0.0.1", PGPORT=str(parts.port or 5432))
    env.update(PGUSER=parts.username or "postgres")
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


async def install(database: str) -> None:
    install_sh = MESSAGE_DB / "install.sh"
    if not install_sh.is_file():
        pytest.fail(
            f"Message DB's install script is missing ({install_sh}): run make message-db",
            pytrace=False,
        )
    lock = await asyncpg.connect(PG_DSN)
    try:
        await lock.execute("SELECT pg_advisory_lock($1)", INSTALL_LOCK)
        script = await asyncio.create_subprocess_exec(
            "bash", str(install_sh), env=script_environment(database),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await script.communicate()
    finally:
        await lock.close()  # (releases the advisory lock)
    if script.returncode != 0:
        pytest.fail(f"Message DB's install.sh failed:\n{output.decode()}", pytrace=False)


async def create_database(name: str) -> None:
    await require_postgres()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextlib.contextmanager
def message_db_database() -> Iterator[str]:
    """The URL of a new database with Message DB installed; dropped at the end."""
    name = f"projectionist_mdb_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(name))
    try:
        asyncio.run(install(name))
        yield database_url(name)
    finally:
        asyncio.run(drop_database(name))


@contextlib.asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """The URL of a new database without Message DB; dropped at the end."""
    name = f"projectionist_mdb_empty_{uuid.uuid4().hex[:10]}"
    await create_database(name)
    try:
        yield database_url(name)
    finally:
        await drop_database(name)
