"""Principal codes (§1): an insurer's is 2-16 of A-Z 0-9 _, a hospital's its
five-digit MOPH hcode. Pure: every service checks codes against these."""

from __future__ import annotations

import re

from iclaim.errors import InvalidArgument

INSURER_CODE_RE = re.compile(r"^[A-Z0-9_]{2,16}$")
HOSPITAL_CODE_RE = re.compile(r"^[0-9]{5}$")


def check_code(value: str, role: str, message: str) -> str:
    """`value` if it is a code of `role` (hospital | insurer); else
    InvalidArgument with `message` and reason HOSPITAL_CODE_INVALID or
    INSURER_CODE_INVALID."""
    pattern = HOSPITAL_CODE_RE if role == "hospital" else INSURER_CODE_RE
    if not pattern.fullmatch(value):
        raise InvalidArgument(message, reason=f"{role.upper()}_CODE_INVALID")
    return value
