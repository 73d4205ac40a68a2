"""Choosing a backend by URL, and the errors when that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from projectionist import (
    Application,
    BackendError,
    ConfigurationError,
    InvalidInputError,
    SchemaError,
    StoreUnavailableError,
    create_store,
)
from projectionist.backends.memory import MemoryEventStore
from projectionist.backends.postgres import PostgresEventStore
from projectionist.backends.sqlite import SqliteEventStore
from projectionist.urls import redact_url


def test_urls_choose_backends(tmp_path: Path) -> None:
    assert isinstance(create_store("memory://"), MemoryEventStore)
    assert isinstance(create_store(f"sqlite:///{tmp_path}/x.db"), SqliteEventStore)
    assert isinstance(create_store("postgresql://u@h/db"), PostgresEventStore)
    assert isinstance(create_store("postgres://u@h/db"), PostgresEventStore)


@pytest.mark.parametrize("url", ["mysql://root:hunter2@host/db", "memory:", "events.db", ""])
def test_unknown_scheme_names_url_without_password(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown store URL") as caught:
        create_store(url)
    assert "hunter2" not in str(caught.value)
    if url.startswith("mysql"):
        assert "mysql://root:***@host/db" in str(caught.value)


def test_redact_url() -> None:
    assert redact_url("postgresql://bob:secret@db:5432/x?schema=a") == (
        "postgresql://bob:***@db:5432/x?schema=a"
    )
    assert redact_url("postgresql://bob@db/x") == "postgresql://bob@db/x"


def test_schema_option_only_for_postgres() -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL only"):
        create_store("memory://", schema="x")


@pytest.mark.parametrize("schema", ["Bad", "1abc", "a-b", 'x"; drop table y; --', "a" * 49])
def test_invalid_schema_names(schema: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid schema name"):
        create_store("postgresql://u@h/db", schema=schema)
    with pytest.raises(InvalidInputError, match="invalid schema name"):
        create_store(f"postgresql://u@h/db?schema={schema}")


async def test_unreachable_postgres_is_a_clear_error_without_password() -> None:
    store = create_store("postgresql://bob:secret@127.0.0.1:1/nowhere")
    with pytest.raises(StoreUnavailableError) as caught:
        await store.open()
    message = str(caught.value)
    assert "postgresql://bob:***@127.0.0.1:1/nowhere" in message
    assert "secret" not in message and "no PostgreSQL server answers" in message
    assert "pg_ctlcluster" not in message  # no development-machine commands in library errors
    assert caught.value.__cause__ is not None


async def test_missing_postgres_database(pg_schema: str) -> None:
    from tests.conftest import PG_DSN

    url = PG_DSN.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(StoreUnavailableError, match="no_such_database_here") as caught:
        await create_store(url).open()
    assert "that database does not exist" in str(caught.value)


async def test_sqlite_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        await create_store(f"sqlite:///{tmp_path}/nope/events.db").open()


def test_bad_sqlite_url() -> None:
    with pytest.raises(ConfigurationError, match="invalid SQLite URL"):
        create_store("sqlite://relative.db")


async def test_store_must_be_opened(tmp_path: Path) -> None:
    from projectionist import NewEvent

    for store in [create_store(f"sqlite:///{tmp_path}/x.db"), create_store("postgresql://u@h/d")]:
        with pytest.raises(StoreUnavailableError, match="not open"):
            await store.append("s", [NewEvent("A", {})])


async def test_missing_schema_says_how_to_apply_it(pg_schema: str, tmp_path: Path) -> None:
    from projectionist import NewEvent
    from tests.conftest import PG_DSN

    for url in [f"{PG_DSN}?schema={pg_schema}", f"sqlite:///{tmp_path}/fresh.db"]:
        async with create_store(url) as store:
            assert await store.schema_version() == 0
            with pytest.raises(SchemaError, match="projectionist schema apply"):
                await store.append("s", [NewEvent("A", {})])
            with pytest.raises(SchemaError, match="projectionist schema apply"):
                await store.read_all()


def test_passwords_in_the_query_string_are_redacted() -> None:
    store = create_store("postgresql://u@h/db?password=s3cret&sslmode=disable")
    assert "s3cret" not in store.url and "password=***" in store.url


async def test_bad_port_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid PostgreSQL URL"):
        await create_store("postgresql://u@127.0.0.1:notaport/db").open()


async def test_sqlite_failed_commit_leaves_the_store_usable(tmp_path: Path) -> None:
    from projectionist import NewEvent

    async with create_store(f"sqlite:///{tmp_path}/fk.db") as store:
        await store.apply_schema()
        models = store.read_models()
        async with models.transaction() as tx:
            await tx.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
            await tx.execute(
                "CREATE TABLE child (id TEXT, parent TEXT REFERENCES parent (id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        with pytest.raises(BackendError, match="FOREIGN KEY"):
            async with models.transaction() as tx:
                await tx.execute("INSERT INTO child VALUES ('c', 'missing')")
        assert (await store.append("s", [NewEvent("A", {})])).version == 1


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("host=h password=hunter2 dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='hunter2 \\' x' user=u", "host=h password=*** user=u"),
        ("PASSWORD = hunter2 sslpassword=hunter2", "PASSWORD = *** sslpassword=***"),
    ],
)
def test_key_value_dsns_are_redacted(dsn: str, shown: str) -> None:
    assert redact_url(dsn) == shown
    with pytest.raises(ConfigurationError, match="key=value connection string") as caught:
        create_store(dsn)
    assert "hunter2" not in str(caught.value)


def test_application_shows_no_password_but_connects_with_it() -> None:
    url = "postgresql://bob:hunter2@127.0.0.1:1/x?sslpassword=hunter2"
    app = Application(url, read_model_url=url)
    assert app.url == "postgresql://bob:***@127.0.0.1:1/x?sslpassword=***"
    assert app.read_model_url == app.url
    assert "hunter2" not in repr(vars(app).get("url")) and "hunter2" not in str(app.url)
    assert app._url == url  # kept privately, to connect with


@pytest.mark.parametrize("url", ["memory://", "sqlite:////abs/x.db", "postgresql://u@h/d?schema=s"])
def test_urls_without_secrets_stay_as_given(url: str) -> None:
    assert redact_url(url) == url
