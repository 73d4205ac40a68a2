"""The connection type the PostgreSQL modules share: one of your own, or one from a pool."""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy
"""A connection of your own or one borrowed from the store's pool."""
