"""State projections: folded per batch, written set-based, the same on every backend."""

from __future__ import annotations

import pytest

from projectionist import Application, HandlerError, NewEvent, RecordedEvent
from projectionist.identifiers import MAX_IDENTIFIER_LENGTH
from projectionist.state import DELETE, ColumnValueError, Evolved, State, StateProjection, fitting
from tests.conftest import settle


def order_totals(batch_size: int = 5000) -> StateProjection:
    projection = StateProjection(
        "order_totals",
        table="order_totals",
        key_column="order_id",
        columns={"status": "TEXT", "items": "BIGINT", "total": "DOUBLE PRECISION"},
        initial=lambda: {"status": "open", "items": 0, "total": 0.0},
        batch_size=batch_size,
    )

    @projection.evolve("ItemAdded")
    def added(state: State, event: RecordedEvent) -> State:
        return {
            **state,
            "items": state["items"] + 1,
            "total": state["total"] + event.data["price"],
        }

    @projection.evolve("Shipped")
    def shipped(state: State, event: RecordedEvent) -> State:
        return {**state, "status": "shipped"}

    @projection.evolve("Cancelled")
    def cancelled(state: State, event: RecordedEvent) -> Evolved:
        return DELETE

    return projection


def daily_counts() -> StateProjection:
    projection = StateProjection(
        "daily_counts",
        table="daily_counts",
        key="day",
        key_column="day",
        initial=lambda: {"orders": 0, "skus": []},
    )

    @projection.evolve("ItemAdded")
    def counted(state: State, event: RecordedEvent) -> State:
        skus = sorted({*state["skus"], event.data["sku"]})
        return {"orders": state["orders"] + 1, "skus": skus}

    return projection


def history() -> list[tuple[str, list[NewEvent]]]:
    appends = []
    for n in range(30):
        day = f"2026-01-{n % 4 + 1:02d}"
        items = [
            NewEvent("ItemAdded", {"price": 1.5 * i + n, "sku": f"sku-{i}", "day": day})
            for i in range(n % 5 + 1)
        ]
        appends.append((f"order-{n:02d}", [*items, NewEvent("Noise", {})]))
        if n % 3 == 0:
            appends.append((f"order-{n:02d}", [NewEvent("Shipped", {})]))
        if n % 10 == 7:
            appends.append((f"order-{n:02d}", [NewEvent("Cancelled", {})]))
    return appends


def expected_totals() -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for n in range(30):
        if n % 10 == 7:
            continue
        prices = [1.5 * i + n for i in range(n % 5 + 1)]
        status = "shipped" if n % 3 == 0 else "open"
        rows.append((f"order-{n:02d}", status, len(prices), sum(prices)))
    return rows


@pytest.mark.parametrize("batch_size", [3, 5000])
async def test_columns_fold_and_delete(app_url: str, batch_size: int) -> None:
    async with Application(app_url, [order_totals(batch_size)]) as app:
        await app.setup()
        for stream_id, events in history():
            await app.store.append(stream_id, events)
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT * FROM order_totals ORDER BY order_id")
        assert rows == expected_totals()
        await settle(app.store)
        assert (await app.status())[0].lag == 0


async def test_json_documents_keyed_by_a_data_field(app_url: str) -> None:
    async with Application(app_url, [daily_counts()]) as app:
        await app.setup()
        for stream_id, events in history():
            await app.store.append(stream_id, events)
        await app.run_until_caught_up()
        state = daily_counts()
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT day, state FROM daily_counts ORDER BY day")
            loaded = await state._load(tx, ["2026-01-01", "2026-01-09"])
        assert [row[0] for row in rows] == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
        orders_per_day = {
            day: 0 for day in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
        }
        for n in range(30):
            orders_per_day[f"2026-01-{n % 4 + 1:02d}"] += n % 5 + 1
        assert {day: doc["orders"] for day, doc in loaded.items()} == {
            "2026-01-01": orders_per_day["2026-01-01"]
        }
        assert loaded["2026-01-01"]["skus"] == [f"sku-{i}" for i in range(5)]


async def test_rebuild_of_a_state_projection(app_url: str) -> None:
    async with Application(app_url, [order_totals(batch_size=4)]) as app:
        await app.setup()
        for stream_id, events in history():
            await app.store.append(stream_id, events)
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            await tx.execute("DELETE FROM order_totals WHERE order_id = 'order-01'")
        await app.rebuild("order_totals")
        async with app.read_models.transaction() as tx:
            assert await tx.fetch("SELECT * FROM order_totals ORDER BY order_id") == (
                expected_totals()
            )


async def test_failing_evolve_stops_at_its_event(app_url: str) -> None:
    broken = daily_counts()  # needs data["day"]: an event without it cannot be keyed
    async with Application(app_url, [broken]) as app:
        await app.setup()
        await app.store.append("order-1", [NewEvent("ItemAdded", {"sku": "a", "day": "d1"})])
        await app.store.append("order-2", [NewEvent("ItemAdded", {"sku": "b"})])
        with pytest.raises(HandlerError, match="stream 'order-2' version 1") as caught:
            await app.run_until_caught_up()
        assert isinstance(caught.value.__cause__, KeyError)
        # The failing batch was narrowed down: order-1's event committed, order-2's did not.
        async with app.read_models.transaction() as tx:
            assert [row[0] for row in await tx.fetch("SELECT * FROM daily_counts")] == ["d1"]


def test_state_projection_definitions_are_checked() -> None:
    with pytest.raises(Exception, match="bad column"):
        StateProjection("p", table="t", initial=dict, columns={"x": "TEXT; DROP TABLE y"})
    with pytest.raises(Exception, match="invalid key column"):
        StateProjection("p", table="t", initial=dict, key_column="Order Id")


async def test_json_columns_hold_nested_values(app_url: str) -> None:
    tags = StateProjection(
        "tags",
        table="tags",
        columns={"count": "BIGINT", "names": "JSON"},
        initial=lambda: {"count": 0, "names": {"seen": []}},
    )

    @tags.evolve("Tagged")
    def tagged(state: State, event: RecordedEvent) -> Evolved:
        names = sorted({*state["names"]["seen"], event.data["tag"]})
        return {"count": state["count"] + 1, "names": {"seen": names, "last": event.data["tag"]}}

    async with Application(app_url, [tags]) as app:
        await app.setup()
        for tag in ["b", "a", "b"]:
            await app.store.append("post-1", [NewEvent("Tagged", {"tag": tag})])
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            loaded = await tags._load(tx, ["post-1"])
        assert loaded == {"post-1": {"count": 3, "names": {"seen": ["a", "b"], "last": "b"}}}


def longest(prefix: str) -> str:
    """The longest identifier a projection accepts (48 characters), starting with ``prefix``."""
    return prefix.ljust(MAX_IDENTIFIER_LENGTH, "x")


async def test_the_longest_accepted_names_work_end_to_end(app_url: str) -> None:
    """Names the constructor accepts never fail later: the staging table PostgreSQL's COPY
    path derives from them stays within its identifier limit (a batch of 150 keys takes
    it), and set-up, catch-up and rebuild work with every name at its longest."""
    table, key, value = longest("table_"), longest("key_"), longest("value_")
    projection = StateProjection(
        longest("name_"),
        table=table,
        key="n",
        key_column=key,
        columns={value: "BIGINT"},
        initial=lambda: {value: 0},
    )

    @projection.evolve("Counted")
    def counted(state: State, event: RecordedEvent) -> State:
        return {value: state[value] + 1}

    expected = [(f"k{n:03}", 2) for n in range(150)]
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("s", [NewEvent("Counted", {"n": k}) for k, _ in expected * 2])
        await settle(app.store)
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            assert await tx.fetch(f"SELECT * FROM {table} ORDER BY {key}") == expected
            await tx.bulk_upsert(table, [key], [value], [(k, 5) for k, _ in expected])
            assert await tx.fetchval(f"SELECT sum({value}) FROM {table}") == 5 * 150
        await app.rebuild(projection.name)
        async with app.read_models.transaction() as tx:
            assert await tx.fetch(f"SELECT * FROM {table} ORDER BY {key}") == expected
        assert [status.errors for status in await app.status()] == [0]


def typed(batch_size: int, on_error: str = "stop") -> StateProjection:
    """Each event sets one column to the value it carries."""
    projection = StateProjection(
        "typed",
        table="typed",
        columns={
            "count": "BIGINT NOT NULL",
            "small": "SMALLINT",
            "code": "VARCHAR(3)",
            "flag": "BOOLEAN",
            "ratio": "DOUBLE PRECISION",
            "name": "TEXT",
        },
        initial=lambda: {
            "count": 0, "small": 0, "code": "a", "flag": False, "ratio": 0.5, "name": "n"
        },
        batch_size=batch_size,
        on_error=on_error,
    )  # fmt: skip

    @projection.evolve("Set")
    def set_value(state: State, event: RecordedEvent) -> State:
        return {**state, event.data["column"]: event.data["value"]}

    return projection


NOT_FITTING = [
    ("count", 0.5),  # PostgreSQL truncated it to 0, SQLite kept 0.5
    ("count", "5"),
    ("count", 2**63),
    ("count", None),  # NOT NULL
    ("count", True),
    ("small", 40_000),
    ("code", "abcd"),
    ("code", 5),
    ("flag", 1),
    ("ratio", "0.5"),
    ("name", 7),
]


@pytest.mark.parametrize("batch_size", [1, 5000])
@pytest.mark.parametrize(("column", "value"), NOT_FITTING)
async def test_a_value_that_does_not_fit_its_column_is_a_handler_error(
    app_url: str, batch_size: int, column: str, value: object
) -> None:
    async with Application(app_url, [typed(batch_size)]) as app:
        await app.setup()
        await app.store.append("k-1", [NewEvent("Set", {"column": "count", "value": 3})])
        # A later event putting things right does not hide it: every state is checked.
        await app.store.append("k-2", [NewEvent("Set", {"column": column, "value": value})])
        await app.store.append("k-2", [NewEvent("Set", {"column": column, "value": 1})])
        with pytest.raises(HandlerError) as caught:
            await app.run_until_caught_up()
        message = str(caught.value)
        assert "projection 'typed'" in message and "key 'k-2'" in message, message
        assert f"column {column!r}" in message, message
        assert caught.value.projection == "typed"
        assert isinstance(caught.value.event, RecordedEvent)
        assert (caught.value.event.stream_id, caught.value.event.version) == ("k-2", 1)
        async with app.read_models.transaction() as tx:
            assert await tx.fetch("SELECT key, count FROM typed") == [("k-1", 3)]


async def test_values_that_do_not_fit_follow_the_error_policy(app_url: str) -> None:
    async with Application(app_url, [typed(5000, on_error="skip")]) as app:
        await app.setup()
        for n, value in enumerate([1, 0.5, 2]):
            await app.store.append(f"k-{n}", [NewEvent("Set", {"column": "count", "value": value})])
        await app.run_until_caught_up()
        [letter] = await app.dead_letters("typed")
        assert letter.event.stream_id == "k-1" and "column 'count'" in letter.error
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT key, count FROM typed ORDER BY key")
        assert rows == [("k-0", 1), ("k-2", 2)]


async def test_values_that_fit_are_kept_exactly(app_url: str) -> None:
    async with Application(app_url, [typed(5000)]) as app:
        await app.setup()
        values = [("count", 2.0), ("count", 2**63 - 1), ("ratio", 3), ("flag", True)]
        for n, (column, value) in enumerate(values):
            await app.store.append(f"k-{n}", [NewEvent("Set", {"column": column, "value": value})])
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT key, count, ratio, flag FROM typed ORDER BY key")
        assert rows == [
            ("k-0", 2, 0.5, False), ("k-1", 2**63 - 1, 0.5, False),
            ("k-2", 0, 3.0, False), ("k-3", 0, 0.5, True),
        ]  # fmt: skip
        assert type(rows[0][1]) is int


def test_what_fits_each_declared_type() -> None:
    # Values event data cannot carry (JSON has no NaN) but an evolve function can compute.
    fits, misfits = [
        ("DOUBLE PRECISION", 2**53), ("REAL", 0.5), ("NUMERIC(5, 2)", 123.45),
        ("NUMERIC", 10**30), ("INTEGER", 2**31 - 1), ("DATE", "not checked"),
    ], [
        ("DOUBLE PRECISION", float("nan")), ("DOUBLE PRECISION", 2**53 + 1),
        ("REAL", 0.1), ("NUMERIC(5, 2)", 0.125), ("NUMERIC(5, 2)", 1234.5),
        ("INTEGER", 2**31), ("TEXT", "a\x00b"), ("DOUBLE PRECISION NOT NULL", None),
    ]  # fmt: skip
    for sql_type, value in fits:
        assert fitting(sql_type)(value) == value
    for sql_type, value in misfits:
        with pytest.raises(ColumnValueError):
            fitting(sql_type)(value)


async def test_values_changed_in_place_are_written_and_unchanged_ones_still_checked(
    app_url: str,
) -> None:
    """A column an evolve leaves alone keeps its checked value; a list it changes in place
    (impure, but it happens) is still written as it ends up, and an int it sets out of range
    later in the same batch is still refused."""
    projection = StateProjection(
        "tags",
        table="tags",
        key_column="item",
        columns={"tags": "JSON", "count": "SMALLINT", "label": "TEXT"},
        initial=lambda: {"tags": [], "count": 0, "label": "item"},
    )

    @projection.evolve("Tagged")
    def tagged(state: State, event: RecordedEvent) -> State:
        state["tags"].append(event.data["tag"])  # in place: the same list object
        return {**state, "count": state["count"] + event.data.get("step", 1)}

    tags = [NewEvent("Tagged", {"tag": f"t{n}"}) for n in range(5)]
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("item-1", tags)
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            [row] = await tx.fetch("SELECT tags, count, label FROM tags")
        assert (row[1], row[2]) == (5, "item")
        assert "t0" in str(row[0]) and "t4" in str(row[0])
        await app.store.append(
            "item-2",
            [NewEvent("Tagged", {"tag": "a"}), NewEvent("Tagged", {"tag": "x", "step": 40_000})],
        )
        with pytest.raises(HandlerError, match="out of SMALLINT's range"):
            await app.run_until_caught_up()
