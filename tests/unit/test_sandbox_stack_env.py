"""What each process of the dev stack is given: the hub's services never see
the sandbox's knobs and only the process serving the AdminService gets the
admin token; the sandbox (a participant) gets nothing of the hub's secrets.
The layouts' processes. And the ready line."""

from __future__ import annotations

from pathlib import Path

import pytest

from iclaim_ops.devstack.stack import ENVOY, SANDBOX, SERVICES, SOURCE_ROOT, Ports, Stack
from iclaim_ops.devstack.up import ready_line

HUB_SECRETS = ("ICLAIM_MASTER_KEY", "ICLAIM_DATABASE_URL", "ICLAIM_REDIS_URL", "ICLAIM_ADMIN_TOKEN")


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    # Whatever the caller's shell holds must not leak where it does not belong.
    monkeypatch.setenv("ICLAIM_ADMIN_TOKEN", "from-the-shell-" + "x" * 32)
    monkeypatch.setenv("ICLAIM_SIM_SLOW_S", "7")
    monkeypatch.setenv("ICLAIM_DATABASE_URL", "postgresql://shell/db")
    s = Stack(
        tmp_path,
        "postgresql://stack/db",
        "redis://stack/0",
        "m" * 43,
        Ports.free(),
        {"ICLAIM_SIM_REVIEW_S": "2", "ICLAIM_LOG_LEVEL": "WARNING"},
    )
    s.admin_token = "t" * 43
    return s


def test_the_admin_token_goes_to_insurer_adapter_only(stack: Stack) -> None:
    for spec in (*SERVICES, ENVOY):
        env = stack.env(spec)
        expected = stack.admin_token if spec.name == "insurer_adapter" else None
        assert env.get("ICLAIM_ADMIN_TOKEN") == expected, spec.name
    assert "ICLAIM_ADMIN_TOKEN" not in stack.env()


def test_the_hub_gets_none_of_the_sandboxs_knobs(stack: Stack) -> None:
    for spec in (*SERVICES, ENVOY):
        env = stack.env(spec)
        assert not [k for k in env if k.startswith("ICLAIM_SIM_")], spec.name
        assert env["ICLAIM_DATABASE_URL"] == "postgresql://stack/db"
        assert env["ICLAIM_LOG_LEVEL"] == "WARNING"


def test_the_sandbox_gets_its_knobs_and_nothing_of_the_hub(stack: Stack) -> None:
    env = stack.env(SANDBOX)
    assert not [k for k in HUB_SECRETS if k in env]
    assert stack.master_key not in env.values()
    assert (env["ICLAIM_SIM_REVIEW_S"], env["ICLAIM_SIM_SLOW_S"], env["ICLAIM_LOG_LEVEL"]) == (
        "2",
        "7",
        "WARNING",
    )
    assert env["ICLAIM_STATE_DIR"] == str(stack.state_dir)
    assert env["PYTHONPATH"].split(":")[0] == str(SOURCE_ROOT)
    assert (SOURCE_ROOT / "sandbox" / "__main__.py").is_file()


def test_the_sandbox_listens_where_the_registry_points(stack: Stack) -> None:
    args = stack.sandbox_args()
    p = stack.ports

    def arg(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert arg("--credentials") == str(stack.state_dir / "sandbox.json")
    assert arg("--grpc") == f"127.0.0.1:{p.sandbox_grpc}"
    assert arg("--webhook") == f"127.0.0.1:{p.sandbox_webhook}"
    assert arg("--health") == f"127.0.0.1:{p.sandbox_health}"
    assert len({p.sandbox_grpc, p.sandbox_webhook, p.sandbox_health, p.gateway, p.adapter}) == 5


def test_the_ready_line_counts_insurers_by_mode(stack: Stack) -> None:
    stack.sandbox_modes = {"grpc": 20, "webhook": 20, "pull": 20}
    line = ready_line(stack, stack.state_dir / "credentials.json")
    assert "insurers 61 (20 grpc, 20 webhook, 21 pull;" in line
    assert str(stack.sandbox_credentials) in line and str(stack.admin_config) in line


def test_the_cohost_layout_runs_router_and_adapter_as_one_process_with_the_token(tmp_path: Path) -> None:
    s = Stack(tmp_path, "postgresql://stack/db", "redis://stack/0", "m" * 43, Ports.free(), layout="cohost")
    s.admin_token = "t" * 43
    names = [spec.name for spec in s.services]
    assert names == ["audit_log", "billing", "router_adapter", "authz"]
    # It serves the adapter's AdminService, so it alone gets the token.
    holders = [spec.name for spec in s.services if s.env(spec).get("ICLAIM_ADMIN_TOKEN") == s.admin_token]
    assert holders == ["router_adapter"]


def test_the_layout_comes_from_the_environment_and_a_bad_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICLAIM_HUB_LAYOUT", "cohost")
    assert Stack(tmp_path, "", "", "").layout == "cohost"
    monkeypatch.delenv("ICLAIM_HUB_LAYOUT")
    assert [s.name for s in Stack(tmp_path, "", "", "").services] == [s.name for s in SERVICES]
    with pytest.raises(ValueError, match="ICLAIM_HUB_LAYOUT"):
        Stack(tmp_path, "", "", "", layout="monolith")
    monkeypatch.setenv("ICLAIM_HUB_LAYOUT", "monolith")
    with pytest.raises(ValueError, match="ICLAIM_HUB_LAYOUT"):
        Stack(tmp_path, "", "", "")
