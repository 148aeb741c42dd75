"""The kit stays inside the participant SDK's floor: no hub module, and no
aiohttp unless the webhook receiver is used (it is an optional extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

KIT_MODULES = [
    "iclaim.cli",
    "iclaim.insurer_cli",
    "iclaim.insurer",
    "iclaim.insurer.credentials",
    "iclaim.insurer.verify",
    "iclaim.insurer.inbox",
    "iclaim.insurer.worker",
    "iclaim.insurer.grpc_endpoint",
    "iclaim.insurer.pull",
    "iclaim.insurer.runner",
]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_the_kit_imports_without_aiohttp_and_without_the_hub() -> None:
    code = (
        "import importlib, json, sys\n"
        "sys.modules['aiohttp'] = None  # as if the extra were not installed\n"
        f"for m in {KIT_MODULES!r}: importlib.import_module(m)\n"
        "import iclaim.insurer as kit\n"
        "kit.Decision, kit.ServePlan, kit.load_insurer_credentials\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert not {m for m in loaded if m.split(".")[0] in ("iclaim_hub", "iclaim_ops", "services", "gateway")}


def test_only_the_webhook_receiver_needs_aiohttp() -> None:
    out = _run("import sys\nsys.modules['aiohttp'] = None\nimport iclaim.insurer.webhook\n")
    assert out.returncode != 0 and "aiohttp" in out.stderr


def test_importing_the_package_loads_no_fhir_models_until_used() -> None:
    out = _run("import sys, iclaim.insurer\nprint('fhir.resources' in sys.modules)\n")
    assert out.stdout.strip() == "False"


def test_unknown_names_are_attribute_errors() -> None:
    import iclaim.insurer as kit

    with pytest.raises(AttributeError):
        kit.nothing_here  # noqa: B018


def test_the_sdk_cli_has_iclaim_insurer_serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from iclaim import cli

    monkeypatch.setattr(cli, "load_plugins", lambda groups: None)  # the SDK's own commands only
    parser = cli.build_parser()
    args = parser.parse_args(["insurer", "serve", "--credentials", "c.json", "--pull"])
    assert (args.insurer_credentials.name, args.pull, args.handler) == ("c.json", True, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["insurer", "serve", "--credentials", "c.json", "--pull", "--grpc", "h:1"])
    with pytest.raises(SystemExit):
        parser.parse_args(["insurer", "serve", "--help"])
    assert "approve every readable claim in full" in capsys.readouterr().out


def test_load_handler_accepts_an_object_a_class_or_an_async_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iclaim.insurer.handler import ApproveInFull, FunctionHandler
    from iclaim.insurer_cli import load_handler

    (tmp_path / "rules_mod.py").write_text(
        "class Rules:\n"
        "    async def decide(self, claim): ...\n"
        "instance = Rules()\n"
        "async def fn(claim): ...\n"
        "not_a_handler = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_handler(None), ApproveInFull)
    assert type(load_handler("rules_mod:Rules")).__name__ == "Rules"
    assert type(load_handler("rules_mod:instance")).__name__ == "Rules"
    assert isinstance(load_handler("rules_mod:fn"), FunctionHandler)
    for bad in ("rules_mod", "rules_mod:not_a_handler", ":x"):
        with pytest.raises((ValueError, TypeError)):
            load_handler(bad)
