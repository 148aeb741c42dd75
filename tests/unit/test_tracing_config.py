"""Tracing is off unless the standard OpenTelemetry environment turns it on,
and Envoy's rendered config lets the trace context through and issues the
request id itself (the behaviour end to end: tests/integration/test_tracing.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.envoy import render_config
from iclaim_hub.common import tracing
from iclaim_hub.common.grpc_tracing import request_id

SDS = Path("/s/gateway-certificate-sds.json")


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, None),  # off by default: no exporter, the no-op tracer
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_the_standard_environment_switches_tracing(env: dict[str, str], exporter: str | None) -> None:
    assert tracing.exporter_name(env) == exporter


def test_an_unknown_exporter_is_a_configuration_error() -> None:
    with pytest.raises(tracing.TracingConfigError):
        tracing.exporter_name({"OTEL_TRACES_EXPORTER": "jaeger"})


def test_with_tracing_off_nothing_is_stored_or_sent() -> None:
    assert not tracing.enabled()  # the unit tests never switch it on process-wide
    assert tracing.current_traceparent() == ""
    assert tracing.outgoing_headers() == []


def test_a_stored_traceparent_is_read_only_in_w3c_form() -> None:
    assert tracing.context_of("00-" + "a" * 32 + "-" + "b" * 16 + "-01") is not None
    for bad in ("", "01-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "0" * 32 + "-" + "b" * 16 + "-01"):
        assert tracing.context_of(bad) is None


def test_only_envoys_uuid_form_is_a_request_id() -> None:
    assert request_id("0b7c3e2a-9f1d-4c55-a1e0-6d2f8b9e4a11") == "0b7c3e2a-9f1d-4c55-a1e0-6d2f8b9e4a11"
    for caller_text in ("Somchai Jaidee", "0B7C3E2A-9F1D-4C55-A1E0-6D2F8B9E4A11", "x" * 36, None):
        assert request_id(caller_text) == ""


def test_envoy_issues_the_request_id_and_passes_traceparent_through() -> None:
    listener = render_config(certificate_sds=SDS, access_log=Path("/a"))["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["generate_request_id"] is True and hcm["preserve_external_request_id"] is False
    assert hcm["always_set_request_id_in_response"] is True
    # A client's own x-request-id is dropped before Envoy decides to keep one.
    (early,) = hcm["early_header_mutation_extensions"]
    assert early["typed_config"]["mutations"] == [{"remove": "x-request-id"}]
    # Nothing strips the trace context on its way to ext_authz and the services:
    # ext_authz is handed it, and no filter or route names it otherwise.
    [authz] = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    passed = [p["exact"] for p in authz.pop("allowed_headers")["patterns"]]
    assert {"traceparent", "tracestate", "x-request-id"} <= set(passed)
    text = json.dumps(hcm).lower()
    assert "traceparent" not in text and "tracestate" not in text


def test_the_otlp_exporter_imports_with_its_own_protos() -> None:
    """xds-protos ships an older opentelemetry/proto/common/v1 without
    InstrumentationScope; installed after opentelemetry-proto it breaks the
    exporter (the Makefile and the image reinstall opentelemetry-proto last)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.common.v1 import common_pb2

    assert OTLPSpanExporter is not None
    assert hasattr(common_pb2, "InstrumentationScope")
