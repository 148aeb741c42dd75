"""deploy/k8s: render base and every overlay, validate every object.

Each kustomization is rendered by the real kustomize, `kubectl kustomize <dir>`
(offline: no cluster, no kubeconfig). kubectl is required: without it, or with
one whose kustomize is older than v5, these tests fail rather than skip (CI
installs it). Every rendered object must pass the Kubernetes JSON schemas
(strict) and the house rules below. The mutation tests at the end prove the
rules fail on broken manifests.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.crd import custom_resource_errors, is_custom

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.33"
TARGETS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
PROD_REPLICAS = {
    "claim-router": 3,
    "authz": 3,
    "gateway": 3,
    "insurer-adapter": 2,
    "audit-log": 2,
    "billing": 2,
}
ENVOY_MODULE = "gateway.envoy"  # TLS listener + loopback admin: no grpc/httpGet probes
AUDIT_MODULE = "services.audit_log"
SHIPPER_MODULE = "services.audit_log.shipper"
# Sidecars (never a pod's first container) -> the port their native gRPC probes
# use; it is not named grpc, which stays the pod's one Service-facing gRPC port.
SIDECARS = {SHIPPER_MODULE: "shipper-health"}
# Services whose gRPC port speaks TLS (kubelet gRPC probes cannot) -> the
# plaintext grpc.health port their probes use instead.
TLS_GRPC = {"sandbox": "health"}
# Only the dev overlay runs the sandbox insurers (docs/protocol.md §8): a
# participant outside the hub, never in base or prod.
DEV_ONLY = {"sandbox": 1}
# Services the hub reaches at an endpoint from the registry (§10 pushes), not
# through an ICLAIM_*_TARGET variable: name -> the apps that call them.
REGISTRY_CALLERS = {"sandbox": {"insurer-adapter"}}
SECRET_NAME = "iclaim-secrets"
# Variables that name a credential: only ever from a Secret, never a literal.
SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|_URL|DSN)$")
# Listen addresses (ICLAIM_*_ADDR) that are not the pod's probe port -> the
# container port they must name (Envoy's Prometheus stats listener).
ADDR_PORTS = {"ICLAIM_ENVOY_STATS_ADDR": "envoy-metrics", "ICLAIM_AUTHZ_HTTP_ADDR": "check"}
# Targets (ICLAIM_*_TARGET) that name a Service port other than grpc: Envoy's
# ext_authz calls authz's HTTP check.
TARGET_PORTS = {"ICLAIM_AUTHZ_TARGET": "check"}
# The Service ports callers reach by a target; each is closed to all but them.
CALLED_PORTS = ("grpc", "check")
# Container ports scraped by Prometheus: each needs a Service port of that name.
SCRAPED_PORTS = ("metrics", "envoy-metrics")
# The request path scales with load (base/hpa.yaml): these Deployments have a
# HorizontalPodAutoscaler and no replica count of their own.
AUTOSCALED = {"gateway", "authz", "claim-router"}
# Services that are not internal gRPC backends: the public entry point, and the
# dev sandbox (an insurer endpoint from the registry, one replica).
NOT_HEADLESS = {"gateway", "sandbox"}
# Connections no env variable shows (dev): pushes to the sandbox's registered
# endpoints, and the sandbox calling the gateway like any insurer.
HIDDEN_FLOWS = [("insurer-adapter", "sandbox", "grpc"), ("insurer-adapter", "sandbox", "webhook")]
HIDDEN_FLOWS += [("sandbox", "gateway", "grpc")]
# The only pods that may reach addresses outside the cluster (ipBlock egress),
# and the ports any pod may reach by port alone (PostgreSQL, Redis: outside
# these manifests, addresses unknown).
INTERNET_EGRESS = {"insurer-adapter"}
STORE_PORTS = {5432, 6379}
# Read by the manifests but not yet by the code (the lead wires them; see README).
PENDING_CODE_SUPPORT: set[str] = set()

Obj = dict[str, Any]


# --------------------------------------------------------------------------- renderer
MIN_KUSTOMIZE = (5, 0)  # kubectl >= 1.27; Debian 12 kubernetes-client (1.20, kustomize v2) rejects `labels`
KUBECTL_HELP = (
    "deploy/k8s tests render the overlays with `kubectl kustomize` (offline, no cluster); "
    f"install kubectl with kustomize >= v{MIN_KUSTOMIZE[0]}.{MIN_KUSTOMIZE[1]} "
    "(CI's .ci/run installs it)"
)
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


@functools.cache
def _kubectl() -> str:
    """The kubectl to render with; fails the test (never skips) when it is unusable."""
    # PATH, then beside this interpreter (a venv's bin/ when kubectl came from a wheel).
    path = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(
            f"kubectl not found on PATH nor in {Path(sys.executable).parent}. {KUBECTL_HELP}", pytrace=False
        )
    proc = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    version = str(info.get("kustomizeVersion", ""))
    m = re.match(r"v?(\d+)\.(\d+)", version)
    if m is None or (int(m[1]), int(m[2])) < MIN_KUSTOMIZE:
        kubectl = info.get("clientVersion", {}).get("gitVersion") or proc.stderr.strip()[:200]
        pytest.fail(
            f"{path} (kubectl {kubectl}): kustomize {version or 'version unknown'} "
            f"is too old. {KUBECTL_HELP}",
            pytrace=False,
        )
    return path


def render(directory: Path) -> list[Obj]:
    """`kubectl kustomize <directory>`, parsed."""
    # No cluster is contacted; an empty KUBECONFIG keeps a developer's config out of it.
    env = {**os.environ, "KUBECONFIG": os.devnull}
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"kubectl kustomize {os.path.relpath(directory, REPO)} failed "
            f"(exit {proc.returncode}):\n{proc.stderr}",
            pytrace=False,
        )
    return [d for d in yaml.safe_load_all(proc.stdout) if d is not None]


def _kustomization(directory: Path) -> Path:
    found = [directory / n for n in KUSTOMIZATION_FILES if (directory / n).is_file()]
    assert len(found) == 1, f"{directory}: expected one kustomization file, found {found}"
    return found[0]


def referenced_files(directory: Path) -> set[Path]:
    """Every local file a kustomization reads, itself included, following
    resources and components into other directories (for the unused-file check;
    kubectl itself fails on a reference to a file that does not exist)."""
    kfile = _kustomization(directory)
    kust = yaml.safe_load(kfile.read_text()) or {}
    files = {kfile.resolve()}
    paths: list[str] = [
        *kust.get("resources", []),
        *kust.get("components", []),
        *kust.get("crds", []),
        *kust.get("configurations", []),
        *kust.get("generators", []),
        *kust.get("transformers", []),
        *kust.get("validators", []),
    ]
    paths += [p for p in kust.get("patchesStrategicMerge", []) if "\n" not in p]
    for field in ("patches", "patchesJson6902", "replacements"):
        paths += [e["path"] for e in kust.get(field, []) if "path" in e]
    for field in ("configMapGenerator", "secretGenerator"):
        for gen in kust.get(field, []):
            paths += [f.rpartition("=")[2] for f in (*gen.get("files", []), *gen.get("envs", []))]
            paths += [gen["env"]] if "env" in gen else []
    if "path" in kust.get("openapi", {}):
        paths.append(kust["openapi"]["path"])
    for entry in paths:
        assert "://" not in entry and not entry.startswith("git@"), (
            f"{kfile}: remote reference {entry!r} (the render must work offline)"
        )
        path = (directory / entry).resolve()
        files |= referenced_files(path) if path.is_dir() else {path}
    return files


def _split_image(ref: str) -> tuple[str, str | None, str | None]:
    ref, _, digest = ref.partition("@")
    name, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        return ref, None, digest or None
    return name, tag, digest or None


# --------------------------------------------------------------------------- helpers
def _pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _all_containers(obj: Obj) -> list[Obj]:
    if obj["kind"] not in WORKLOADS:
        return []
    spec = _pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _ns(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", "default"))


def _of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def _ident(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _named_port(container: Obj, name: str) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == name:
            return int(port["containerPort"])
    return None


def _module(container: Obj) -> str | None:
    cmd = container.get("command", [])
    return cmd[2] if len(cmd) == 3 and cmd[1] == "-m" else None


def _resolved_env(container: Obj, namespace: str) -> dict[str, str | None]:
    """Values as the kubelet sets them: $(VAR) expands only earlier variables;
    None for values from Secrets."""
    env: dict[str, str | None] = {}
    for item in container.get("env", []):
        if "value" in item:

            def expand(m: re.Match[str]) -> str:
                known = env.get(m.group(1))
                return known if known is not None else m.group(0)

            env[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, str(item["value"]))
        else:
            field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[item["name"]] = namespace if field == "metadata.namespace" else None
    return env


_QTY = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> float:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not m or m.group(2) not in _QTY:
        raise ValueError(f"bad quantity {value!r}")
    return float(m.group(1)) * _QTY[m.group(2)]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# Shapes of credentials that must never be committed: PEM blocks, URLs with a
# password, long base64/hex tokens (a 32-byte master key is 43 characters).
SECRET_SHAPES = [
    re.compile(r"-----BEGIN [A-Z ]+-----"),
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    re.compile(r"(?<![A-Za-z0-9_\-+/])[A-Za-z0-9_\-+/]{40,}={0,2}"),
]


# --------------------------------------------------------------------------- house rules
def secret_problems(docs: list[Obj]) -> list[str]:
    problems = []
    for doc in docs:
        if doc.get("kind") == "Secret":
            problems.append(f"{_ident(doc)}: Secret objects are created by hand (README), never committed")
        for path, text in _strings(doc):
            if path.endswith(".image"):
                continue  # digests are long hex by design
            if doc.get("kind") == "PrometheusRule" and path.endswith((".expr", ".runbook_url")):
                continue  # PromQL and runbook links are long identifiers by design
            for shape in SECRET_SHAPES:
                if shape.search(text):
                    problems.append(
                        f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                        f"{path}: looks like a secret value"
                    )
    return problems


def container_problems(dep: Obj, container: Obj) -> list[str]:
    where = f"{_ident(dep)}[{container['name']}]"
    problems: list[str] = []
    pod = _pod_spec(dep)
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})

    def sec(field: str) -> Any:
        return csc.get(field, psc.get(field))

    if sec("runAsNonRoot") is not True or sec("runAsUser") == 0:
        problems.append(f"{where}: must run as non-root")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: root filesystem must be read-only")
    if csc.get("allowPrivilegeEscalation") is not False or csc.get("privileged"):
        problems.append(f"{where}: privilege escalation must be off")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []) or csc.get("capabilities", {}).get("add"):
        problems.append(f"{where}: must drop ALL capabilities and add none")
    if (sec("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile must be RuntimeDefault")

    res = container.get("resources", {})
    for kind in ("cpu", "memory"):
        req, lim = res.get("requests", {}).get(kind), res.get("limits", {}).get(kind)
        if req is None or lim is None:
            problems.append(f"{where}: needs {kind} request and limit")
        elif quantity(req) > quantity(lim):
            problems.append(f"{where}: {kind} request above its limit")

    module = _module(container)
    probe_port = SIDECARS.get(module or "", TLS_GRPC.get(module or "", "grpc"))
    grpc_port = _named_port(container, probe_port)
    if grpc_port is None:
        problems.append(f"{where}: needs a container port named {probe_port}")
    if module in SIDECARS and _named_port(container, "grpc") is not None:
        problems.append(f"{where}: a sidecar must not expose a port named grpc")
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None:
            problems.append(f"{where}: needs a {kind}")
        elif _module(container) == ENVOY_MODULE:
            if not ({"exec", "tcpSocket"} & set(probe)):
                problems.append(f"{where}: Envoy {kind} must be exec or tcpSocket")
        elif probe.get("grpc", {}).get("port") != grpc_port:
            problems.append(f"{where}: {kind} must be a native gRPC probe on the {probe_port} port")

    source = REPO / module.replace(".", "/") if module else REPO
    if not ((source / "__main__.py").is_file() or source.with_suffix(".py").is_file()):
        problems.append(
            f"{where}: command must be python -m <existing package>, got {container.get('command')}"
        )
    if container.get("image", "").split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] != "iclaim":
        problems.append(f"{where}: every service runs the one iclaim image")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    writable = [
        p for p, m in mounts.items() if not m.get("readOnly") and "emptyDir" in volumes.get(m["name"], {})
    ]
    if "/tmp" not in writable:
        problems.append(f"{where}: /tmp must be a writable emptyDir (read-only root)")

    env = _resolved_env(container, _ns(dep))
    for item in container.get("env", []):
        name = item["name"]
        if SECRET_ENV.search(name) and not str(item.get("value", "")).startswith("/"):
            # (a path to a file on a mounted Secret volume is fine)
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is None or ref.get("name") != SECRET_NAME:
                problems.append(f"{where}: {name} must come from secretKeyRef {SECRET_NAME}")
    for name, value in env.items():
        if value is None or not value.startswith("/"):
            continue
        if name.endswith(("_DIR", "_LOG", "_STATE")) and not any(
            value == w or value.startswith(w.rstrip("/") + "/") for w in writable
        ):
            problems.append(f"{where}: {name}={value} is not on a writable emptyDir")
        if name.endswith(("_CERT", "_KEY")) and not any(value.startswith(p + "/") for p in mounts):
            problems.append(f"{where}: {name}={value} is not on a mounted volume")
    for name, value in env.items():
        if value is None or not name.endswith("_ADDR"):
            continue
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if name == "ICLAIM_ENVOY_ADMIN_ADDR":
            if not ipaddress.ip_address(host).is_loopback:
                problems.append(f"{where}: Envoy admin must stay on loopback")
            if int(port) in {int(p["containerPort"]) for p in container.get("ports", [])}:
                problems.append(f"{where}: Envoy admin port must not be a container port")
            for text in _exec_texts(container):
                for used in re.findall(r"127\.0\.0\.1:(\d+)", text):
                    if used != port:
                        problems.append(f"{where}: exec hook uses admin port {used}, env says {port}")
        else:
            if host not in ("0.0.0.0", "::"):
                problems.append(f"{where}: {name} must listen on all interfaces, not {host}")
            want = ADDR_PORTS.get(name, probe_port)
            if int(port) != _named_port(container, want):
                problems.append(f"{where}: {name} port {port} is not the {want} container port")
    metrics_port = _named_port(container, "metrics")
    for name, value in env.items():
        if name.endswith("_METRICS_PORT") and value is not None and int(value) != metrics_port:
            problems.append(f"{where}: {name}={value} is not the container port named metrics")
    return problems


def _exec_texts(container: Obj) -> list[str]:
    hooks = [container.get(p, {}) for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    hooks += [container.get("lifecycle", {}).get(h, {}) for h in ("preStop", "postStart")]
    return [" ".join(h["exec"]["command"]) for h in hooks if "exec" in h]


def deployment_problems(objs: list[Obj]) -> list[str]:
    problems: list[str] = []
    services = _of_kind(objs, "Service")
    accounts = {(_ns(a), a["metadata"]["name"]): a for a in _of_kind(objs, "ServiceAccount")}
    for dep in _of_kind(objs, "Deployment"):
        pod = _pod_spec(dep)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if not _selects(dep["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"{_ident(dep)}: selector does not match its pod labels")
        account = accounts.get((_ns(dep), pod.get("serviceAccountName", "")))
        if account is None:
            problems.append(f"{_ident(dep)}: needs its own ServiceAccount")
        elif account.get("automountServiceAccountToken") is not False:
            problems.append(f"{_ident(dep)}: ServiceAccount must not automount a token")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{_ident(dep)}: pod must not automount a token")
        for i, container in enumerate(pod["containers"]):
            if (i == 0) == (_module(container) in SIDECARS):
                problems.append(
                    f"{_ident(dep)}[{container['name']}]: the first container runs "
                    f"the service, later ones only known sidecars {sorted(SIDECARS)}"
                )
            problems += container_problems(dep, container)
        port_names = [p["name"] for c in _all_containers(dep) for p in c.get("ports", []) if "name" in p]
        duplicated = sorted({n for n in port_names if port_names.count(n) > 1})
        if duplicated:
            problems.append(f"{_ident(dep)}: container port names must be unique in the pod: {duplicated}")
        mine = [s for s in services if _ns(s) == _ns(dep) and _selects(s["spec"].get("selector", {}), labels)]
        ports = {p.get("name"): p for s in mine for p in s["spec"]["ports"]}
        if "grpc" not in ports:
            problems.append(f"{_ident(dep)}: needs a Service with a port named grpc")
        for pname, sport in ports.items():
            target = sport.get("targetPort", sport["port"])
            if not any(
                _named_port(c, target)
                if isinstance(target, str)
                else target in {p["containerPort"] for p in c.get("ports", [])}
                for c in pod["containers"]
            ):
                problems.append(f"{_ident(dep)}: Service port {pname} targets no container port")
        for scraped in SCRAPED_PORTS:
            if any(_named_port(c, scraped) for c in pod["containers"]) and scraped not in ports:
                problems.append(
                    f"{_ident(dep)}: {scraped} container port needs a Service port named {scraped}"
                )
    return problems


_TARGET_HOST = re.compile(r"(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc(\.cluster\.local)?")


def target_problems(objs: list[Obj]) -> list[str]:
    """ICLAIM_*_TARGET must name a Service's grpc port (TARGET_PORTS: the port
    named there) by its cluster DNS name; each backend's NetworkPolicy admits
    on each such port exactly the pods that target it."""
    problems: list[str] = []
    services = {(_ns(s), s["metadata"]["name"]): s for s in _of_kind(objs, "Service")}
    callers: dict[tuple[str, str, str], set[str]] = {
        (*key, port): set(REGISTRY_CALLERS.get(key[1], ()) if port == "grpc" else ())
        for key in services
        for port in CALLED_PORTS
    }
    for dep in _of_kind(objs, "Deployment"):
        app = dep["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name", "")
        for container in _pod_spec(dep)["containers"]:
            for name, value in _resolved_env(container, _ns(dep)).items():
                if not re.fullmatch(r"ICLAIM_[A-Z_]+_TARGET", name):
                    continue
                where = f"{_ident(dep)}: {name}={value}"
                host, _, port = (value or "").rpartition(":")
                m = _TARGET_HOST.fullmatch(host)
                if m is None:
                    problems.append(f"{where}: not <service>.<namespace>.svc:<port>")
                    continue
                svc = services.get((m["ns"], m["svc"]))
                want = TARGET_PORTS.get(name, "grpc")
                named = [p for p in (svc or {}).get("spec", {}).get("ports", []) if p.get("name") == want]
                if svc is None:
                    problems.append(f"{where}: no such Service")
                elif not named or str(named[0]["port"]) != port:
                    problems.append(f"{where}: not the Service's {want} port")
                else:
                    callers[(m["ns"], m["svc"], want)].add(app)
    for (ns, name), svc in services.items():
        if svc["spec"].get("type") == "LoadBalancer" or name == "gateway":
            continue  # the public entry point
        pols = [
            p
            for p in _of_kind(objs, "NetworkPolicy")
            if _ns(p) == ns
            and _selects(p["spec"]["podSelector"].get("matchLabels", {}), svc["spec"]["selector"])
        ]
        for port in CALLED_PORTS:
            if not any(p.get("name") == port for p in svc["spec"]["ports"]):
                continue  # nothing called behind it (gateway-metrics); the pods' other Service is checked
            allowed: set[str] = set()
            open_port = False
            for pol in pols:
                for rule in pol["spec"].get("ingress", []):
                    if not any(p.get("port") == port for p in rule.get("ports", [])):
                        continue
                    if not rule.get("from"):
                        open_port = True
                    for peer in rule.get("from", []):
                        allowed.add(
                            peer.get("podSelector", {})
                            .get("matchLabels", {})
                            .get("app.kubernetes.io/name", "<not a pod selector>")
                        )
            if not pols or open_port:
                problems.append(f"Service/{name}: {port} port must be closed to all but its callers")
            elif allowed != callers[(ns, name, port)]:
                problems.append(
                    f"Service/{name}: NetworkPolicy admits {sorted(allowed)} on {port}, "
                    f"callers are {sorted(callers[(ns, name, port)])}"
                )
    return problems


def _mount_of(container: Obj, path: str) -> Obj | None:
    """The volume mount a file path lives on (the longest matching mountPath)."""
    hits = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    return max(hits, key=lambda m: len(m["mountPath"]), default=None)


def shipper_problems(objs: list[Obj]) -> list[str]:
    """Gateway calls reach the audit trail: every Envoy pod runs one shipper on
    Envoy's own access log (same path on the same writable emptyDir), and
    audit-log does not tail a file that is not in its pod."""
    problems: list[str] = []
    for dep in _of_kind(objs, "Deployment"):
        pod, ns = _pod_spec(dep), _ns(dep)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        envoys = [c for c in pod["containers"] if _module(c) == ENVOY_MODULE]
        shippers = [c for c in pod["containers"] if _module(c) == SHIPPER_MODULE]
        if len(shippers) != (1 if envoys else 0):
            problems.append(
                f"{_ident(dep)}: needs exactly one audit shipper per Envoy pod, "
                f"none elsewhere (has {len(shippers)})"
            )
        for envoy in envoys:
            log = _resolved_env(envoy, ns).get("ICLAIM_ENVOY_ACCESS_LOG")
            envoy_mount = _mount_of(envoy, log or "")
            for shipper in shippers:
                shipped = _resolved_env(shipper, ns).get("ICLAIM_ENVOY_ACCESS_LOG")
                mount = _mount_of(shipper, shipped or "")
                if not log or shipped != log:
                    problems.append(
                        f"{_ident(dep)}: the shipper must read Envoy's access log {log}, not {shipped}"
                    )
                elif (
                    envoy_mount is None
                    or mount is None
                    or mount["name"] != envoy_mount["name"]
                    or "emptyDir" not in volumes.get(mount["name"], {})
                    or mount.get("readOnly")
                ):
                    problems.append(
                        f"{_ident(dep)}: the shipper must mount Envoy's access-log "
                        "emptyDir, writable (its state file lives there)"
                    )
        for container in pod["containers"]:
            if (
                _module(container) == AUDIT_MODULE
                and _resolved_env(container, ns).get("ICLAIM_AUDIT_TAIL_ACCESS_LOG") != "false"
            ):
                problems.append(
                    f"{_ident(dep)}: audit-log must not tail an access log in-cluster "
                    "(ICLAIM_AUDIT_TAIL_ACCESS_LOG=false; the gateway's shipper sends it)"
                )
    return problems


def _labels(dep: Obj) -> dict[str, str]:
    labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
    return labels


def _app(dep: Obj) -> str:
    return _labels(dep).get("app.kubernetes.io/name", "")


def _pod_selected(selector: Obj, labels: dict[str, str]) -> bool:
    """A NetworkPolicy podSelector: {} selects every pod of the namespace."""
    if set(selector) - {"matchLabels"}:
        return False  # matchExpressions: not used here, never assumed to match
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _policies(objs: list[Obj], ns: str, labels: dict[str, str], direction: str) -> list[Obj]:
    return [
        p
        for p in _of_kind(objs, "NetworkPolicy")
        if _ns(p) == ns
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and _pod_selected(p["spec"]["podSelector"], labels)
    ]


def _port_allowed(rule: Obj, name: str, number: int) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        port = p.get("port")
        if port == name or (isinstance(port, int) and port <= number <= p.get("endPort", port)):
            return True
    return False


def _peer_is(peer: Obj, labels: dict[str, str]) -> bool:
    """A same-namespace pod peer (no namespaceSelector, no ipBlock) that selects these labels."""
    return (
        "podSelector" in peer and set(peer) == {"podSelector"} and _pod_selected(peer["podSelector"], labels)
    )


def _flows(objs: list[Obj]) -> list[tuple[Obj, Obj, str, int]]:
    """(caller, callee, container port name, number) for every env value of
    the form <service>.<namespace>.svc:<port> (plus HIDDEN_FLOWS)."""
    deps = _of_kind(objs, "Deployment")
    services = {(_ns(s), s["metadata"]["name"]): s for s in _of_kind(objs, "Service")}
    flows: list[tuple[Obj, Obj, str, int]] = []
    for caller in deps:
        for container in _all_containers(caller):
            for value in _resolved_env(container, _ns(caller)).values():
                host, _, port = (value or "").rpartition(":")
                m = _TARGET_HOST.fullmatch(host)
                svc = services.get((m["ns"], m["svc"])) if m else None
                if svc is None or not port.isdigit():
                    continue
                for sport in svc["spec"]["ports"]:
                    if sport["port"] != int(port):
                        continue
                    target = sport.get("targetPort", sport["port"])
                    for callee in deps:
                        if _ns(callee) != _ns(svc) or not _selects(svc["spec"]["selector"], _labels(callee)):
                            continue
                        for c in _pod_spec(callee)["containers"]:
                            for cp in c.get("ports", []):
                                if target in (cp.get("name"), cp["containerPort"]):
                                    flows.append((caller, callee, cp.get("name", ""), cp["containerPort"]))
    by_app = {(_ns(d), _app(d)): d for d in deps}
    for caller_app, callee_app, port_name in HIDDEN_FLOWS:
        for (ns, app), caller in by_app.items():
            callee = by_app.get((ns, callee_app))
            if app != caller_app or callee is None:
                continue
            number = next(
                _named_port(c, port_name)
                for c in _pod_spec(callee)["containers"]
                if _named_port(c, port_name)
            )
            flows.append((caller, callee, port_name, int(number or 0)))
    return flows


def network_problems(objs: list[Obj]) -> list[str]:
    """Default-deny in and out; DNS for every pod; each caller -> callee
    connection allowed at both ends; the internet only where it is needed."""
    problems: list[str] = []
    namespaces = {_ns(d) for d in _of_kind(objs, "Deployment")}
    for ns in sorted(namespaces):
        deny = [
            p
            for p in _of_kind(objs, "NetworkPolicy")
            if _ns(p) == ns
            and p["spec"]["podSelector"] == {}
            and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        if not deny:
            problems.append(f"namespace {ns}: needs a default-deny NetworkPolicy (ingress and egress)")
    for dep in _of_kind(objs, "Deployment"):
        egress = [
            r for p in _policies(objs, _ns(dep), _labels(dep), "Egress") for r in p["spec"].get("egress", [])
        ]
        dns = [
            r
            for r in egress
            if any(
                peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                == "kube-system"
                for peer in r.get("to", [])
            )
        ]
        for proto in ("UDP", "TCP"):
            if not any(
                p.get("port") == 53 and p.get("protocol") == proto for r in dns for p in r.get("ports", [])
            ):
                problems.append(f"{_ident(dep)}: no DNS egress (kube-system, {proto} 53)")
    for pol in _of_kind(objs, "NetworkPolicy"):
        selected = {
            _app(d)
            for d in _of_kind(objs, "Deployment")
            if _ns(d) == _ns(pol) and _pod_selected(pol["spec"]["podSelector"], _labels(d))
        }
        for rule in pol["spec"].get("egress", []):
            peers = rule.get("to", [])
            if not peers and not rule.get("ports"):
                problems.append(f"{_ident(pol)}: an allow-all egress rule")
            elif not peers and {p.get("port") for p in rule["ports"]} - STORE_PORTS:
                problems.append(f"{_ident(pol)}: egress to any address only for PostgreSQL/Redis ports")
            if any("ipBlock" in peer for peer in peers) and selected - INTERNET_EGRESS:
                problems.append(
                    f"{_ident(pol)}: internet egress (ipBlock) for {sorted(selected - INTERNET_EGRESS)}; "
                    f"only {sorted(INTERNET_EGRESS)} pushes outside the cluster"
                )
    for caller, callee, name, number in _flows(objs):
        ns, what = _ns(caller), f"{_app(caller)} -> {_app(callee)}:{name or number}"
        if not any(
            _port_allowed(r, name, number)
            and (not r.get("to") or any(_peer_is(peer, _labels(callee)) for peer in r["to"]))
            for p in _policies(objs, ns, _labels(caller), "Egress")
            for r in p["spec"].get("egress", [])
        ):
            problems.append(f"{what}: no egress rule from the caller allows it")
        if not any(
            _port_allowed(r, name, number)
            # (no `from`: every source, e.g. the public gateway port)
            and (not r.get("from") or any(_peer_is(peer, _labels(caller)) for peer in r["from"]))
            for p in _policies(objs, ns, _labels(callee), "Ingress")
            for r in p["spec"].get("ingress", [])
        ):
            problems.append(f"{what}: no ingress rule at the callee admits it")
    return problems


def scaling_problems(objs: list[Obj]) -> list[str]:
    """HPAs: the autoscaled Deployments exist, have CPU requests (utilisation
    is relative to them) and no replica count (the HPA owns it); behavior set;
    internal gRPC backends are headless (clients spread over every pod)."""
    problems: list[str] = []
    deps = {(_ns(d), d["metadata"]["name"]): d for d in _of_kind(objs, "Deployment")}
    hpas = _of_kind(objs, "HorizontalPodAutoscaler")
    targeted: dict[tuple[str, str], int] = {}
    for hpa in hpas:
        ref, spec = hpa["spec"]["scaleTargetRef"], hpa["spec"]
        key = (_ns(hpa), ref["name"])
        targeted[key] = targeted.get(key, 0) + 1
        dep = deps.get(key)
        if ref.get("kind") != "Deployment" or dep is None:
            problems.append(f"{_ident(hpa)}: no such Deployment {ref.get('kind')}/{ref['name']}")
            continue
        for c in _all_containers(dep):
            if "cpu" not in c.get("resources", {}).get("requests", {}):
                problems.append(f"{_ident(hpa)}: {_ident(dep)}[{c['name']}] has no CPU request")
        if "replicas" in dep["spec"]:
            problems.append(f"{_ident(dep)}: has replicas, but its HPA owns the count")
        behavior = spec.get("behavior", {})
        for direction in ("scaleUp", "scaleDown"):
            if "stabilizationWindowSeconds" not in behavior.get(direction, {}):
                problems.append(f"{_ident(hpa)}: behavior.{direction} needs a stabilization window")
        if behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 0) < 60:
            problems.append(f"{_ident(hpa)}: behavior.scaleDown must wait at least a minute")
        if not 1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]:
            problems.append(f"{_ident(hpa)}: needs 1 <= minReplicas <= maxReplicas")
    for (ns, name), dep in deps.items():
        if name in AUTOSCALED and targeted.get((ns, name)) != 1:
            problems.append(f"{_ident(dep)}: needs exactly one HorizontalPodAutoscaler")
    for svc in _of_kind(objs, "Service"):
        grpc = any(p.get("name") == "grpc" for p in svc["spec"]["ports"])
        if grpc and svc["metadata"]["name"] not in NOT_HEADLESS and svc["spec"].get("clusterIP") != "None":
            problems.append(f"{_ident(svc)}: an internal gRPC backend must be headless (clusterIP: None)")
    return problems


def _env_resource(container: Obj, var: str, resource: str) -> float | None:
    """What the kubelet puts in `var`: a literal, or a resourceFieldRef of this
    container (rounded up to whole divisors); None when unset or from elsewhere."""
    for item in container.get("env", []):
        if item["name"] != var:
            continue
        if "value" in item:
            return float(item["value"])
        ref = item.get("valueFrom", {}).get("resourceFieldRef")
        if ref is None or ref.get("containerName", container["name"]) != container["name"]:
            return None
        if ref["resource"] != resource:
            return None
        limit = container.get("resources", {}).get("limits", {}).get(resource.partition(".")[2])
        return math.ceil(quantity(limit) / quantity(ref.get("divisor", "1"))) if limit else None
    return None


def envoy_problems(objs: list[Obj]) -> list[str]:
    """Envoy runs one worker per CPU of its limit (rounded up), not one per
    host CPU, and sizes its overload manager from its own memory limit."""
    problems: list[str] = []
    for dep in _of_kind(objs, "Deployment"):
        for c in _all_containers(dep):
            if _module(c) != ENVOY_MODULE:
                continue
            limits = c.get("resources", {}).get("limits", {})
            want = math.ceil(quantity(limits.get("cpu", 0)))
            got = _env_resource(c, "ICLAIM_ENVOY_CONCURRENCY", "limits.cpu")
            if got != want:
                problems.append(
                    f"{_ident(dep)}: Envoy concurrency {got} != its CPU limit rounded up ({want})"
                )
            memory = _env_resource(c, "ICLAIM_ENVOY_MEMORY_LIMIT_BYTES", "limits.memory")
            if memory != quantity(limits.get("memory", 0)):
                problems.append(f"{_ident(dep)}: Envoy memory limit {memory} is not its container's")
    return problems


def env_name_problems(objs: list[Obj]) -> list[str]:
    """Every ICLAIM_* variable set in a manifest is read somewhere in the code
    (catches typos that would silently fall back to a default)."""
    code = _source_text()
    problems = []
    for dep in _of_kind(objs, "Deployment"):
        for container in _all_containers(dep):
            for item in container.get("env", []):
                name = item["name"]
                if name.startswith("ICLAIM_") and name not in PENDING_CODE_SUPPORT and name not in code:
                    problems.append(f"{_ident(dep)}: {name} is read by no code")
    return problems


@functools.cache
def _source_text() -> str:
    """All the project's Python outside tests/ (wherever the packages live)."""
    skip = {"tests", "node_modules", "__pycache__", "build", "dist"}
    texts = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".") and not d.endswith(".egg-info")]
        texts += [(Path(root) / f).read_text(errors="replace") for f in files if f.endswith(".py")]
    text = "\n".join(texts)
    # ServeConfig.from_env("P", …) reads ICLAIM_P_ADDR and ICLAIM_P_METRICS_PORT.
    derived = [
        f"ICLAIM_{p}_ADDR ICLAIM_{p}_METRICS_PORT"
        for p in re.findall(r'ServeConfig\.from_env\(\s*"([A-Z_]+)"', text)
    ]
    return "\n".join([text, *derived])


def house_problems(objs: list[Obj]) -> list[str]:
    return (
        secret_problems(objs)
        + deployment_problems(objs)
        + target_problems(objs)
        + shipper_problems(objs)
        + network_problems(objs)
        + scaling_problems(objs)
        + envoy_problems(objs)
        + env_name_problems(objs)
    )


# --------------------------------------------------------------------------- fixtures
@functools.cache
def _rendered(name: str) -> list[Obj]:
    return render(TARGETS[name])


def rendered(name: str) -> list[Obj]:
    return copy.deepcopy(_rendered(name))


def _by_name(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in _of_kind(objs, kind)}


def _replica_counts(objs: list[Obj]) -> dict[str, int]:
    """Deployment -> its replicas; for an autoscaled one, its HPA's minimum."""
    floors = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
        for h in _of_kind(objs, "HorizontalPodAutoscaler")
    }
    return {n: d["spec"].get("replicas", floors.get(n)) for n, d in _by_name(objs, "Deployment").items()}


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_object_is_valid_kubernetes(target: str) -> None:
    errors = []
    for obj in rendered(target):
        if is_custom(obj):  # prometheus-operator kinds: their CRD schemas (tests/support/crd.py)
            errors += [f"{_ident(obj)}: {e}" for e in custom_resource_errors(obj)]
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{_ident(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert errors == []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_house_rules(target: str) -> None:
    objs = rendered(target)
    expected = set(PROD_REPLICAS) | (set(DEV_ONLY) if target == "dev" else set())
    assert {d["metadata"]["name"] for d in _of_kind(objs, "Deployment")} == expected
    assert house_problems(objs) == []


def test_no_committed_secrets_in_any_manifest_file() -> None:
    docs = [d for p in sorted(K8S.rglob("*.y*ml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert docs
    assert secret_problems(docs) == []


def test_every_manifest_file_is_rendered() -> None:
    used = set().union(*(referenced_files(TARGETS[t]) for t in TARGETS))
    files = {p.resolve() for p in K8S.rglob("*.y*ml")}
    assert files - used == set(), "manifest files that no kustomization uses"


def test_readme_documents_every_secret_key() -> None:
    readme = (K8S / "README.md").read_text()
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for dep in _of_kind(rendered("prod"), "Deployment")
        for c in _all_containers(dep)
        for item in c.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert keys == {
        "database-url",
        "redis-url",
        "master-key",
        "admin-token",
        "audit-owner-database-url",
        "audit-database-url",
    }
    for key in keys:
        assert f"--from-literal={key}=" in readme


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_only_the_audit_logs_init_container_holds_the_audit_owners_login(target: str) -> None:
    """The audit schema's owner could switch the append-only triggers off: its
    login goes to a container that migrates and exits, never to a server."""
    holders, audit_servers = [], []
    for dep in _of_kind(rendered(target), "Deployment"):
        pod = _pod_spec(dep)
        for c in _all_containers(dep):
            keys = {
                item["valueFrom"]["secretKeyRef"]["key"]: item["name"]
                for item in c.get("env", [])
                if "secretKeyRef" in item.get("valueFrom", {})
            }
            if "audit-owner-database-url" in keys:
                holders.append((_module(c), c in pod.get("initContainers", [])))
            if _module(c) == AUDIT_MODULE:
                audit_servers.append(keys)
    assert holders == [("services.audit_log.migrate", True)]
    assert audit_servers == [{"audit-database-url": "ICLAIM_DATABASE_URL", "master-key": "ICLAIM_MASTER_KEY"}]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_drain_ends_inside_the_termination_grace(target: str) -> None:
    """preStop sleep + the service's gRPC drain (ICLAIM_SHUTDOWN_GRACE_S, default
    5 s) must leave the process time to close before the kubelet's SIGKILL."""
    for dep in _of_kind(rendered(target), "Deployment"):
        pod = _pod_spec(dep)
        for c in pod["containers"]:
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            drain = float(_resolved_env(c, _ns(dep)).get("ICLAIM_SHUTDOWN_GRACE_S") or 5)
            assert sleep + drain + 5 <= pod["terminationGracePeriodSeconds"], _ident(dep)
    router = _by_name(rendered(target), "Deployment")["claim-router"]
    env = _resolved_env(_pod_spec(router)["containers"][0], _ns(router))
    assert float(env["ICLAIM_SHUTDOWN_GRACE_S"] or 0) >= 20  # its waits last up to 30 s


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_secret_volumes_are_mounted_whole(target: str) -> None:
    """A subPath mount of a Secret is never updated by the kubelet: a renewed
    gateway certificate would not reach Envoy's watch."""
    for dep in _of_kind(rendered(target), "Deployment"):
        secrets_ = {v["name"] for v in _pod_spec(dep).get("volumes", []) if "secret" in v}
        for c in _all_containers(dep):
            for m in c.get("volumeMounts", []):
                assert not (m["name"] in secrets_ and "subPath" in m), f"{_ident(dep)}[{c['name']}]"


def test_dev_overlay() -> None:
    objs = rendered("dev")
    assert {_ns(o) for o in objs if o["kind"] != "Namespace"} == {"iclaim-dev"}
    (ns,) = _of_kind(objs, "Namespace")
    assert ns["metadata"]["name"] == "iclaim-dev"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert _replica_counts(objs) == {**{name: 1 for name in PROD_REPLICAS}, **DEV_ONLY}


def _sandbox_objects(objs: list[Obj]) -> list[str]:
    return [
        _ident(o)
        for o in objs
        if o["metadata"]["name"].startswith("sandbox")
        or o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "sandbox"
    ]


@pytest.mark.parametrize("target", ["base", "prod"])
def test_only_the_dev_overlay_has_the_sandbox(target: str) -> None:
    assert _sandbox_objects(rendered(target)) == []


def test_dev_sandbox_is_a_participant_outside_the_hub() -> None:
    objs = rendered("dev")
    assert sorted(_sandbox_objects(objs)) == [
        "Deployment/sandbox",
        "NetworkPolicy/sandbox-egress",
        "NetworkPolicy/sandbox-ingress",
        "Service/sandbox",
        "ServiceAccount/sandbox",
    ]
    server = _server(objs, "sandbox")
    assert _module(server) == "sandbox"
    args = server["args"]
    # Its credentials (private keys) come from a Secret volume, read-only.
    credentials = args[args.index("--credentials") + 1]
    mount = _mount_of(server, credentials)
    assert mount is not None and mount.get("readOnly") is True
    volume = {v["name"]: v for v in _pod_spec(_dep(objs, "sandbox"))["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "iclaim-sandbox"
    # Listens where its Service and probes say.
    for flag, port in (("--grpc", "grpc"), ("--webhook", "webhook"), ("--health", "health")):
        host, _, number = args[args.index(flag) + 1].rpartition(":")
        assert host == "0.0.0.0" and int(number) == _named_port(server, port), flag
    service_ports = {p["name"] for p in _by_name(objs, "Service")["sandbox"]["spec"]["ports"]}
    assert service_ports == {"grpc", "webhook"}
    # Nothing of the hub: no database, master key, admin token or Redis.
    names = {e["name"] for e in server.get("env", [])}
    assert not names & {"ICLAIM_DATABASE_URL", "ICLAIM_MASTER_KEY", "ICLAIM_ADMIN_TOKEN", "ICLAIM_REDIS_URL"}
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in server.get("env", []))
    # Pushes only from the hub's delivery layer, on both push ports.
    (rule,) = _by_name(objs, "NetworkPolicy")["sandbox-ingress"]["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in rule["from"]] == [
        "insurer-adapter"
    ]
    assert {p["port"] for p in rule["ports"]} == {"grpc", "webhook"}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_hub_simulates_no_insurer(target: str) -> None:
    """The sandbox's knobs are the sandbox's: no hub Deployment reads them."""
    for dep in _of_kind(rendered(target), "Deployment"):
        if dep["metadata"]["name"] in DEV_ONLY:
            continue
        for c in _all_containers(dep):
            assert not [e["name"] for e in c.get("env", []) if e["name"].startswith("ICLAIM_SIM_")]


def test_prod_overlay() -> None:
    objs = rendered("prod")
    assert {_ns(o) for o in objs if o["kind"] != "Namespace"} == {"iclaim"}
    deps = _by_name(objs, "Deployment")
    assert _replica_counts(objs) == PROD_REPLICAS
    for name, dep in deps.items():
        for c in _all_containers(dep):
            _, tag, digest = _split_image(c["image"])
            assert digest or (tag and tag != "latest"), f"{name}: image must be pinned"
    pdbs = _of_kind(objs, "PodDisruptionBudget")
    for name, dep in deps.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in pdbs if _selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, f"{name}: needs exactly one PodDisruptionBudget"
        spec = mine[0]["spec"]
        replicas = _replica_counts(objs)[name]
        allowed = spec.get("maxUnavailable", replicas - spec.get("minAvailable", 0))
        assert 1 <= allowed < replicas, f"{name}: PDB must allow 1..n-1 down"
    dev = _by_name(rendered("dev"), "Deployment")
    for name, dep in deps.items():
        prod_lim = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        dev_lim = dev[name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        for kind in ("cpu", "memory"):
            assert quantity(prod_lim[kind]) > quantity(dev_lim[kind]), f"{name}: prod {kind} limit"
    assert _by_name(objs, "Service")["gateway"]["spec"]["type"] == "LoadBalancer"


HUB_FLOWS = {
    ("gateway", "authz"),
    ("gateway", "claim-router"),
    ("gateway", "billing"),
    ("gateway", "audit-log"),  # Envoy (AuditTrailService) and the shipper sidecar (Append)
    ("claim-router", "insurer-adapter"),
    ("claim-router", "audit-log"),
    ("claim-router", "billing"),
    ("insurer-adapter", "claim-router"),
    ("billing", "claim-router"),
}
SANDBOX_FLOWS = {("insurer-adapter", "sandbox"), ("sandbox", "gateway")}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_connection_is_found_and_allowed(target: str) -> None:
    """The pairs network_problems checks (egress at the caller, ingress at the
    callee) are every connection the hub makes, read from the env targets."""
    objs = rendered(target)
    found = {(_app(a), _app(b)) for a, b, _, _ in _flows(objs)}
    assert found == HUB_FLOWS | (SANDBOX_FLOWS if target == "dev" else set())
    assert network_problems(objs) == []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_default_deny_autoscaling_headless_and_envoy_workers(target: str) -> None:
    objs = rendered(target)
    deny = _by_name(objs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    hpas = _by_name(objs, "HorizontalPodAutoscaler")
    assert set(hpas) == AUTOSCALED
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    headless = {
        s["metadata"]["name"] for s in _of_kind(objs, "Service") if s["spec"].get("clusterIP") == "None"
    }
    assert headless == {"claim-router", "insurer-adapter", "audit-log", "billing", "authz"}
    envoy = _server(objs, "gateway")
    cpu = math.ceil(quantity(envoy["resources"]["limits"]["cpu"]))
    assert _env_resource(envoy, "ICLAIM_ENVOY_CONCURRENCY", "limits.cpu") == cpu
    assert scaling_problems(objs) == [] and envoy_problems(objs) == []


def test_prod_envoy_has_two_workers_for_two_cpus() -> None:
    envoy = _server(rendered("prod"), "gateway")
    assert envoy["resources"]["limits"]["cpu"] == "2"
    assert _env_resource(envoy, "ICLAIM_ENVOY_CONCURRENCY", "limits.cpu") == 2
    assert _env_resource(envoy, "ICLAIM_ENVOY_MEMORY_LIMIT_BYTES", "limits.memory") == 2**30


# --- the rules must be able to fail ---------------------------------------------------
def _dep(objs: list[Obj], name: str) -> Obj:
    return _by_name(objs, "Deployment")[name]


def _server(objs: list[Obj], name: str) -> Obj:
    container: Obj = _pod_spec(_dep(objs, name))["containers"][0]
    return container


def _env(objs: list[Obj], dep: str, var: str) -> Obj:
    return next(e for e in _server(objs, dep)["env"] if e["name"] == var)


def _shipper(objs: list[Obj]) -> Obj:
    return next(c for c in _pod_spec(_dep(objs, "gateway"))["containers"] if _module(c) == SHIPPER_MODULE)


def _shipper_env(objs: list[Obj], var: str) -> Obj:
    return next(e for e in _shipper(objs)["env"] if e["name"] == var)


def _literal(item: Obj, value: str) -> None:
    item.pop("valueFrom")
    item["value"] = value


MUTATIONS: dict[str, tuple[Callable[[list[Obj]], object], str]] = {
    "no readiness probe": (lambda o: _server(o, "billing").pop("readinessProbe"), "needs a readinessProbe"),
    "probe on metrics port": (
        lambda o: _server(o, "authz")["livenessProbe"].update(grpc={"port": 9105}),
        "native gRPC probe",
    ),
    "httpGet probe on Envoy": (
        lambda o: _server(o, "gateway").update(readinessProbe={"httpGet": {"path": "/ready", "port": 9901}}),
        "exec or tcpSocket",
    ),
    "writable root": (
        lambda o: _server(o, "claim-router")["securityContext"].update(readOnlyRootFilesystem=False),
        "read-only",
    ),
    "root user": (
        lambda o: _pod_spec(_dep(o, "audit-log"))["securityContext"].update(runAsUser=0),
        "non-root",
    ),
    "no memory limit": (
        lambda o: _server(o, "insurer-adapter")["resources"]["limits"].pop("memory"),
        "memory request and limit",
    ),
    "literal database url": (
        lambda o: _literal(
            _env(o, "billing", "ICLAIM_DATABASE_URL"), "postgresql://iclaim:hunter2@db/iclaim"
        ),
        "secretKeyRef",
    ),
    "committed Secret": (
        lambda o: o.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "x"},
                "stringData": {"master-key": "A" * 43},
            }
        ),
        "Secret objects",
    ),
    "target to missing service": (
        lambda o: _env(o, "claim-router", "ICLAIM_AUDIT_TARGET").update(
            value="audit.$(POD_NAMESPACE).svc:50071"
        ),
        "no such Service",
    ),
    "target to wrong port": (
        lambda o: _env(o, "gateway", "ICLAIM_AUTHZ_TARGET").update(value="authz.$(POD_NAMESPACE).svc:9105"),
        "check port",
    ),
    "loopback listen address": (
        lambda o: _env(o, "billing", "ICLAIM_BILLING_ADDR").update(value="127.0.0.1:50081"),
        "all interfaces",
    ),
    "admin exposed": (
        lambda o: _env(o, "gateway", "ICLAIM_ENVOY_ADMIN_ADDR").update(value="0.0.0.0:9901"),
        "loopback",
    ),
    "no grpc service port": (
        lambda o: next(
            p for p in _by_name(o, "Service")["authz"]["spec"]["ports"] if p["name"] == "grpc"
        ).update(name="h2c"),
        "port named grpc",
    ),
    "policy admits everyone": (
        lambda o: _by_name(o, "NetworkPolicy")["authz-ingress"]["spec"]["ingress"][0].pop("from"),
        "closed to all but its callers",
    ),
    "token automounted": (
        lambda o: _by_name(o, "ServiceAccount")["billing"].update(automountServiceAccountToken=True),
        "automount",
    ),
    "typo in env name": (
        lambda o: _env(o, "audit-log", "ICLAIM_AUDIT_TAIL_ACCESS_LOG").update(
            name="ICLAIM_AUDIT_TAIL_ACCES_LOG"
        ),
        "read by no code",
    ),
    "sidecar probe on metrics port": (
        lambda o: _shipper(o)["livenessProbe"].update(grpc={"port": 9106}),
        "native gRPC probe on the shipper-health port",
    ),
    "sidecar health port named grpc": (
        lambda o: _shipper(o)["ports"][0].update(name="grpc"),
        "unique in the pod",
    ),
    "sidecar health on loopback": (
        lambda o: _shipper_env(o, "ICLAIM_SHIPPER_ADDR").update(value="127.0.0.1:50072"),
        "all interfaces",
    ),
    "shipper state on read-only root": (
        lambda o: _shipper_env(o, "ICLAIM_SHIPPER_STATE").update(value="/opt/state"),
        "writable emptyDir",
    ),
    "shipper reads another file": (
        lambda o: _shipper_env(o, "ICLAIM_ENVOY_ACCESS_LOG").update(value="/tmp/envoy-access.log"),
        "Envoy's access log",
    ),
    "shipper has its own volume": (
        lambda o: _shipper(o)["volumeMounts"][1].update(name="tmp"),
        "access-log emptyDir",
    ),
    "no shipper": (
        lambda o: _pod_spec(_dep(o, "gateway"))["containers"].remove(_shipper(o)),
        "exactly one audit shipper",
    ),
    "shipper as first container": (
        lambda o: _pod_spec(_dep(o, "gateway"))["containers"].reverse(),
        "first container",
    ),
    "unknown sidecar": (
        lambda o: _pod_spec(_dep(o, "billing"))["containers"].append(
            {**copy.deepcopy(_server(o, "billing")), "name": "extra"}
        ),
        "known sidecars",
    ),
    "audit-log tails in-cluster": (
        lambda o: _env(o, "audit-log", "ICLAIM_AUDIT_TAIL_ACCESS_LOG").update(value="true"),
        "must not tail",
    ),
    "no default deny": (
        lambda o: o.remove(_by_name(o, "NetworkPolicy")["default-deny"]),
        "default-deny",
    ),
    "no DNS": (
        lambda o: o.remove(_by_name(o, "NetworkPolicy")["dns-egress"]),
        "no DNS egress",
    ),
    "caller may not connect": (
        lambda o: _by_name(o, "NetworkPolicy")["gateway-egress"]["spec"]["egress"][0]["to"].pop(0),
        "gateway -> authz:check: no egress rule",
    ),
    "callee does not admit": (
        lambda o: _by_name(o, "NetworkPolicy")["billing-ingress"]["spec"]["ingress"][0]["from"].pop(1),
        "claim-router -> billing:grpc: no ingress rule",
    ),
    "egress to the wrong port": (
        lambda o: _by_name(o, "NetworkPolicy")["billing-egress"]["spec"]["egress"][0]["ports"][0].update(
            port="metrics"
        ),
        "billing -> claim-router:grpc: no egress rule",
    ),
    "allow-all egress": (
        lambda o: _by_name(o, "NetworkPolicy")["audit-log-egress"]["spec"]["egress"].append({}),
        "allow-all egress",
    ),
    "any address on any port": (
        lambda o: _by_name(o, "NetworkPolicy")["authz-egress"]["spec"]["egress"][0]["ports"].append(
            {"protocol": "TCP", "port": 443}
        ),
        "only for PostgreSQL/Redis ports",
    ),
    "internet from the router": (
        lambda o: _by_name(o, "NetworkPolicy")["claim-router-egress"]["spec"]["egress"].append(
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}
        ),
        "internet egress (ipBlock) for ['claim-router']",
    ),
    "hpa to a missing deployment": (
        lambda o: _by_name(o, "HorizontalPodAutoscaler")["authz"]["spec"]["scaleTargetRef"].update(
            name="auth"
        ),
        "no such Deployment",
    ),
    "hpa without behavior": (
        lambda o: _by_name(o, "HorizontalPodAutoscaler")["gateway"]["spec"].pop("behavior"),
        "stabilization window",
    ),
    "autoscaled pod without cpu request": (
        lambda o: _shipper(o)["resources"]["requests"].pop("cpu"),
        "has no CPU request",
    ),
    "replicas beside an hpa": (
        lambda o: _dep(o, "claim-router")["spec"].update(replicas=3),
        "HPA owns the count",
    ),
    "no hpa for the router": (
        lambda o: o.remove(_by_name(o, "HorizontalPodAutoscaler")["claim-router"]),
        "exactly one HorizontalPodAutoscaler",
    ),
    "backend behind a virtual ip": (
        lambda o: _by_name(o, "Service")["billing"]["spec"].pop("clusterIP"),
        "headless",
    ),
    "envoy workers per host cpu": (
        lambda o: _server(o, "gateway")["env"].remove(_env(o, "gateway", "ICLAIM_ENVOY_CONCURRENCY")),
        "Envoy concurrency None",
    ),
    "envoy workers above the limit": (
        lambda o: _env(o, "gateway", "ICLAIM_ENVOY_CONCURRENCY")["valueFrom"]["resourceFieldRef"].update(
            divisor="500m"
        ),
        "Envoy concurrency 4",
    ),
    "envoy workers literal": (
        lambda o: _literal(_env(o, "gateway", "ICLAIM_ENVOY_CONCURRENCY"), "1"),
        "Envoy concurrency 1.0",
    ),
    "envoy heap from another container": (
        lambda o: _env(o, "gateway", "ICLAIM_ENVOY_MEMORY_LIMIT_BYTES")["valueFrom"][
            "resourceFieldRef"
        ].update(containerName="audit-shipper"),
        "Envoy memory limit",
    ),
    "stats listener on loopback": (
        lambda o: _env(o, "gateway", "ICLAIM_ENVOY_STATS_ADDR").update(value="127.0.0.1:9902"),
        "all interfaces",
    ),
    "stats listener off its port": (
        lambda o: _env(o, "gateway", "ICLAIM_ENVOY_STATS_ADDR").update(value="0.0.0.0:9903"),
        "envoy-metrics container port",
    ),
    "envoy stats not on a service": (
        lambda o: _by_name(o, "Service")["gateway-metrics"]["spec"]["ports"].pop(1),
        "Service port named envoy-metrics",
    ),
    "wrong module": (
        lambda o: _server(o, "billing").update(command=["python", "-m", "services.biling"]),
        "existing package",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_house_rules_catch(mutation: str) -> None:
    objs = rendered("prod")
    mutate, expected = MUTATIONS[mutation]
    mutate(objs)
    problems = house_problems(objs)
    assert any(expected in p for p in problems), problems


def test_schema_catches_a_misspelt_field() -> None:
    dep = _dep(rendered("prod"), "claim-router")
    _pod_spec(dep)["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
