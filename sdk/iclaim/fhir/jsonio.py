"""JSON in and out with exact decimals: FHIR decimals must not pass through float."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import Any

from iclaim.fhir.errors import FhirError

MAX_DOCUMENT_BYTES = 1024 * 1024


def loads(data: bytes | str) -> Any:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FhirError("DOCUMENT_TOO_LARGE", "document exceeds 1 MiB")
    try:
        return json.loads(data, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise FhirError("NOT_JSON", "document is not valid JSON") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON; each Decimal is written as its exact decimal literal."""
    nonce = secrets.token_hex(8)
    literals: list[str] = []

    # The encoder calls this only for what it cannot write itself (a Decimal
    # here), so the document is not copied and walked in Python first.
    def placeholder(value: Any) -> str:
        if isinstance(value, Decimal):
            literals.append(format(value, "f"))
            return f"\x00{nonce}:{len(literals) - 1}"
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=placeholder)
    for i, literal in enumerate(literals):
        text = text.replace(f'"\\u0000{nonce}:{i}"', literal, 1)
    return text.encode("utf-8")
