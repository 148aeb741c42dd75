"""datetime -> google.protobuf.Timestamp, written once for every servicer."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def timestamp_or_none(when: datetime | None) -> Timestamp | None:
    """For optional message fields: None leaves the field unset."""
    return None if when is None else timestamp(when)
