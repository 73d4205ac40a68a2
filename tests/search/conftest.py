"""Search tests run on every backend, with the engine tests' fresh store per test."""

from __future__ import annotations

from tests.engine.conftest import app_url

__all__ = ["app_url"]
