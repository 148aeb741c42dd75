"""The one error type of the FHIR helpers; `reason` is a stable UPPER_SNAKE code."""

from __future__ import annotations


class FhirError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
