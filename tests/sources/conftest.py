"""Fixtures of the source tests: NATS streams (jetstream_support.py) and Redis prefixes."""

from tests.sources.jetstream_support import jet_stream, make_jet_stream
from tests.targets.conftest import redis_prefix

__all__ = ["jet_stream", "make_jet_stream", "redis_prefix"]
