"""The public contract in one place: the services the gateway exposes (§2).

Everything that enumerates the public surface (gateway decoding, reflection,
tests) reads it from here, so a new public service is added once."""

from __future__ import annotations

from types import ModuleType

from google.protobuf.descriptor import ServiceDescriptor

from iclaim.v1 import (
    audit_trail_service_pb2,
    billing_service_pb2,
    claim_service_pb2,
    insurer_service_pb2,
)

PUBLIC_MODULES: tuple[ModuleType, ...] = (
    claim_service_pb2,
    insurer_service_pb2,
    billing_service_pb2,
    audit_trail_service_pb2,
)


def public_services() -> list[ServiceDescriptor]:
    return [s for m in PUBLIC_MODULES for s in m.DESCRIPTOR.services_by_name.values()]


def public_service_names() -> list[str]:
    return [s.full_name for s in public_services()]


def public_methods() -> set[str]:
    """Every public method path, e.g. /iclaim.v1.ClaimService/SubmitClaim."""
    return {f"/{s.full_name}/{m.name}" for s in public_services() for m in s.methods}
