"""jsonio.dumps writes exact decimals; it gives the same bytes as the walk-and-
swap implementation it replaced (kept here as the reference)."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iclaim.fhir.jsonio import dumps, loads


def _reference_dumps(doc: Any) -> bytes:
    nonce = secrets.token_hex(8)
    literals: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Decimal):
            literals.append(format(value, "f"))
            return f"\x00{nonce}:{len(literals) - 1}"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(doc), ensure_ascii=False, separators=(",", ":"))
    for i, literal in enumerate(literals):
        text = text.replace(f'"\\u0000{nonce}:{i}"', literal, 1)
    return text.encode("utf-8")


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False, places=None)
    | st.text(max_size=12)
)
_docs = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(_docs)
def test_dumps_matches_the_reference(doc: Any) -> None:
    assert dumps(doc) == _reference_dumps(doc)


def test_decimals_are_exact_and_read_back() -> None:
    doc = {"a": [Decimal("1234.56"), Decimal("0.10"), {"b": Decimal("92233720368547758.07")}], "c": 1.5}
    out = dumps(doc)
    assert out == b'{"a":[1234.56,0.10,{"b":92233720368547758.07}],"c":1.5}'
    assert loads(out) == {
        "a": [Decimal("1234.56"), Decimal("0.10"), {"b": Decimal("92233720368547758.07")}],
        "c": Decimal("1.5"),
    }


def test_what_is_not_json_is_refused_as_before() -> None:
    for doc in ({"a": object()}, {Decimal(1): 1}, [{1, 2}]):
        with pytest.raises(TypeError):
            dumps(doc)
        with pytest.raises(TypeError):
            _reference_dumps(doc)
