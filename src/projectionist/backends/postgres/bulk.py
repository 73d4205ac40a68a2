"""PostgreSQL's SQL features and its bulk write: binary COPY into a staging table, one upsert.

The engine writes one statement for every SQL database and asks the transaction for the few
pieces that differ (``POSTGRES_FEATURES``); a state projection's catch-up batch writes its
rows through ``bulk_upsert``, which here takes the fastest set-based path PostgreSQL offers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ...identifiers import quote_identifier
from ...readmodel import SqlFeatures, upsert_sql
from .connections import Connection

POSTGRES_FEATURES = SqlFeatures(
    document_type="JSONB",
    document_as_text="::text",
    clock="extract(epoch from clock_timestamp())::double precision",
    take_or_skip="FOR UPDATE SKIP LOCKED",
    share_with_takers="FOR KEY SHARE",
    one_of_texts="{column} = ANY({param}::text[])",
    texts_as_json=False,
    table_columns=(
        "SELECT a.attname, coalesce(a.attnum = ANY(i.indkey), false) FROM pg_attribute a "
        "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
        "WHERE a.attrelid = to_regclass(format('%I.%I', current_schema(), $1::text)) "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    ),
    full_text="tsvector",
)
COPY_THRESHOLD = 100
"""From this many rows on, COPY beats one pipelined upsert (a live batch stays below)."""


async def copy_upsert(
    connection: Connection,
    quoted_schema: str,
    table: str,
    key: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    shape: str,
) -> None:
    """COPY ``rows`` into a per-connection staging table, then upsert them in one statement.

    The staging table is made ``LIKE`` the target (in ``quoted_schema``, the transaction's)
    once per connection, schema and shape; another shape (new column types) gets its own.
    Its name is a digest, short whatever the table's, and both are schema-qualified, so a
    same-named table elsewhere on the search path is never the one emptied or copied.
    """
    names = [*key, *columns]
    identity = "\x00".join([quoted_schema, table, shape, *names]).encode()
    stage_name = "pj_stage_" + hashlib.md5(identity, usedforsecurity=False).hexdigest()[:24]
    stage = f"pg_temp.{quote_identifier(stage_name)}"
    await connection.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote_identifier(stage_name)} "
        f"(LIKE {quoted_schema}.{quote_identifier(table)} INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    )
    await connection.copy_records_to_table(
        stage_name, records=rows, columns=names, schema_name="pg_temp"
    )
    # The stage is emptied by the upsert itself, not only at commit: a replay writes many
    # batches in one transaction, and a later one must not upsert an earlier one's rows again.
    selected = ", ".join(quote_identifier(name) for name in names)
    await connection.execute(
        f"WITH staged AS (DELETE FROM {stage} RETURNING {selected}) "
        + upsert_sql(table, key, columns, f"SELECT {selected} FROM staged")
    )
