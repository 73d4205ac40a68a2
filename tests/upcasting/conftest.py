"""The engine tests' fixtures: a fresh store URL of every backend."""

from tests.engine.conftest import app_url

__all__ = ["app_url"]
