"""Copies fields by name between the hub's layers: a database row or a message
into a dataclass, a dataclass into a message or another dataclass.

Most of a mapper is fields with the same name on both sides; `copy_fields`
copies those, so a mapper spells out only what it converts. Pure: it reads a
message class's descriptor without importing protobuf."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from functools import cache, partial
from typing import Any, Protocol, TypeVar, cast

T = TypeVar("T")


class Row(Protocol):
    """What `copy_columns` reads of a row; `asyncpg.Record` has it."""

    def keys(self) -> Iterable[str]: ...
    def __getitem__(self, key: str, /) -> Any: ...


@cache  # per class: walking a descriptor's fields on every copy cost more than the copy
def _field_names(target: type) -> tuple[str, ...]:
    descriptor = getattr(target, "DESCRIPTOR", None)  # a protobuf message class
    if descriptor is None:
        return tuple(f.name for f in dataclasses.fields(cast(Any, target)) if f.init)
    # Message and enum fields take converted values (a Timestamp from a datetime,
    # an enum from a name): never copied as they are.
    return tuple(f.name for f in descriptor.fields if f.message_type is None and f.enum_type is None)


def _copy(target: type[T], given: dict[str, Any], has: Callable[[str], bool], get: Callable[[str], Any]) -> T:
    names = _field_names(cast(type, target))  # type[T] is hashable; mypy cannot see it
    copied = {n: get(n) for n in names if n not in given and has(n)}
    return cast(Callable[..., T], target)(**copied, **given)


def copy_fields(target: type[T], source: object, /, **given: Any) -> T:
    """`target(**given, ...)` plus every other field of `target` that `source`
    has as an attribute of the same name. Of a message target only scalar and
    repeated scalar fields are copied; a field `source` lacks keeps the
    target's default."""
    return _copy(target, given, partial(hasattr, source), partial(getattr, source))


def copy_columns(target: type[T], row: Row, /, **given: Any) -> T:
    """The same from a database row (`asyncpg.Record`): columns by name."""
    return _copy(target, given, set(row.keys()).__contains__, row.__getitem__)
