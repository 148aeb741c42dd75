"""One FHIR R4B resource in and out: the expected resourceType, then valid per
its model; anything else is a FhirError with a reason."""

from __future__ import annotations

from typing import Any, TypeVar

from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from iclaim.fhir.errors import FhirError
from iclaim.fhir.jsonio import loads

R = TypeVar("R", bound=Resource)


def validated(doc: dict[str, Any], model: type[R]) -> R:
    try:
        return model.model_validate(doc)
    except (ValidationError, ValueError, TypeError) as exc:
        raise FhirError("FHIR_INVALID", f"not a valid FHIR {model.__name__}") from exc


def load_resource(data: bytes | str, model: type[Resource], not_it_reason: str) -> dict[str, Any]:
    """The document as JSON (exact decimals), once it is a valid `model`."""
    doc = loads(data)
    if not isinstance(doc, dict) or doc.get("resourceType") != model.__name__:
        raise FhirError(not_it_reason, f"document is not a FHIR {model.__name__}")
    validated(doc, model)
    return doc
