"""NATS JetStream as an event source (nats-py): ``pip install projectionist[nats]``.

``source`` holds ``JetStreamSource``, ``cursors`` the ephemeral pull consumers it reads
through, ``mapping`` how a message becomes an event (and subjects checked), ``options`` its
URL and durations checked, ``errors`` the errors only it raises.
"""

from .errors import JetStreamDecodeError, JetStreamHistoryLostError
from .mapping import (
    DEFAULT_STREAM_HEADER,
    DEFAULT_TYPE_HEADER,
    DEFAULT_VERSION_HEADER,
    EVENT_ID_NAMESPACE,
    MessageMap,
    decode_json,
)
from .source import JetStreamSource

__all__ = [
    "DEFAULT_STREAM_HEADER",
    "DEFAULT_TYPE_HEADER",
    "DEFAULT_VERSION_HEADER",
    "EVENT_ID_NAMESPACE",
    "JetStreamDecodeError",
    "JetStreamHistoryLostError",
    "JetStreamSource",
    "MessageMap",
    "decode_json",
]
