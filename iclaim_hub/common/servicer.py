"""What every thin servicer holds: the one use-case object it serves."""

from __future__ import annotations

from typing import Generic, TypeVar

U = TypeVar("U")


class Serves(Generic[U]):
    """Listed before the generated servicer base, e.g.
    `class ClaimServicer(Serves[ClaimRouter], ClaimServiceServicer)`."""

    def __init__(self, use_cases: U) -> None:
        self.use_cases = use_cases
