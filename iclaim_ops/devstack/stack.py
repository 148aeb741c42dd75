"""Runs the whole clearinghouse as child processes: the services, the gateway's
auth service and Envoy, with health-checked start-up and a clean stop that
leaves no process behind; then the sandbox insurers (§8) as a participant
process of their own. Used by `iclaim up`, `make bench` and the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from iclaim_ops.devstack import tied

STOP_GRACE_S = 10.0
START_TIMEOUT_S = 60.0


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free now. Each socket stays bound until all
    are picked: one closed at once can be handed out again by the next bind
    (27 of 3,000 sets of 15 had a duplicate here), and services that share a
    port fail to start."""
    with contextlib.ExitStack() as held:
        picked = []
        for _ in range(n):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            picked.append(int(sock.getsockname()[1]))
        return picked


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class Ports:
    gateway: int = 8443
    envoy_admin: int = 9901
    router: int = 50051
    adapter: int = 50061
    audit: int = 50071
    billing: int = 50081
    authz: int = 50091
    authz_http: int = 50092  # the HTTP check Envoy calls
    router_metrics: int = 9101
    adapter_metrics: int = 9102
    audit_metrics: int = 9103
    billing_metrics: int = 9104
    authz_metrics: int = 9105
    # The sandbox insurers' own listeners (the registry points push insurers here).
    sandbox_grpc: int = 50101
    sandbox_webhook: int = 50102
    sandbox_health: int = 50103  # plaintext grpc.health, SERVING once all its listeners are up

    @classmethod
    def free(cls) -> Ports:
        names = [f.name for f in fields(cls)]
        return cls(**dict(zip(names, free_ports(len(names)), strict=True)))


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    grpc_port_field: str | None  # health-checked over gRPC when set


SERVICES = (
    ServiceSpec("audit_log", "services.audit_log", "audit"),
    ServiceSpec("billing", "services.billing", "billing"),
    ServiceSpec("claim_router", "services.claim_router", "router"),
    ServiceSpec("insurer_adapter", "services.insurer_adapter", "adapter"),
    ServiceSpec("authz", "gateway.authz", "authz"),
)
ENVOY = ServiceSpec("envoy", "gateway.envoy", None)
# Not part of the hub: started last, stopped first, with an environment of its own.
SANDBOX = ServiceSpec("sandbox", "sandbox", "sandbox_health")
# The "cohost" layout (ICLAIM_HUB_LAYOUT=cohost): the router and the insurer
# adapter in one process (iclaim_ops.cohost), the hand-offs between them in-process.
ROUTER_ADAPTER = ServiceSpec("router_adapter", "iclaim_ops.cohost", "router")
COHOST_SERVICES = tuple(
    ROUTER_ADAPTER if s.name == "claim_router" else s for s in SERVICES if s.name != "insurer_adapter"
)
LAYOUTS = {"split": SERVICES, "cohost": COHOST_SERVICES}
LAYOUT_ENV = "ICLAIM_HUB_LAYOUT"
# The processes that serve the AdminService (the insurer adapter's), so get its token.
ADMIN_HOSTS = frozenset({"insurer_adapter", ROUTER_ADAPTER.name})
HUB = (*SERVICES, ENVOY)
ADMIN_TOKEN_ENV = "ICLAIM_ADMIN_TOKEN"
# What the sandbox process may see of the stack's settings: its own knobs only.
SANDBOX_ENV_PREFIXES = ("ICLAIM_SIM_",)
SANDBOX_ENV_NAMES = ("ICLAIM_LOG_LEVEL", "ICLAIM_STATE_DIR")
# The sandbox is a top-level package of the repository, not of an installed
# distribution: `python -m sandbox` finds it through PYTHONPATH from any cwd.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def checked_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{LAYOUT_ENV} must be one of {', '.join(LAYOUTS)}")
    return layout


def layout_from_env() -> str:
    return checked_layout(os.environ.get(LAYOUT_ENV, "split"))


@dataclass
class Stack:
    state_dir: Path
    database_url: str
    redis_url: str
    master_key: str
    ports: Ports = field(default_factory=Ports)
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    # Set by start(): the adapter's AdminService token (also in admin.json).
    admin_token: str = ""
    # Delivery mode -> how many sandbox insurers use it (for the ready line).
    sandbox_modes: dict[str, int] = field(default_factory=dict)
    # Which hub processes run (LAYOUTS): ICLAIM_HUB_LAYOUT, "split" unless set.
    layout: str = field(default_factory=layout_from_env)

    def __post_init__(self) -> None:
        checked_layout(self.layout)

    @property
    def services(self) -> tuple[ServiceSpec, ...]:
        return LAYOUTS[self.layout]

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.ports.gateway}"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def access_log(self) -> Path:
        return self.state_dir / "envoy-access.log"

    @property
    def sandbox_credentials(self) -> Path:
        return self.state_dir / "sandbox.json"

    @property
    def admin_config(self) -> Path:
        return self.state_dir / "admin.json"

    def env(self, spec: ServiceSpec | None = None) -> dict[str, str]:
        """A hub process's environment. The admin token goes to insurer_adapter
        only; the sandbox's timing knobs to none (the hub simulates nothing)."""
        if spec is SANDBOX:
            return self.sandbox_env()
        p = self.ports
        env = {
            k: v
            for k, v in os.environ.items()
            if k != ADMIN_TOKEN_ENV and not k.startswith(SANDBOX_ENV_PREFIXES)
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "ICLAIM_STATE_DIR": str(self.state_dir),
                "ICLAIM_DATABASE_URL": self.database_url,
                "ICLAIM_REDIS_URL": self.redis_url,
                "ICLAIM_MASTER_KEY": self.master_key,
                "ICLAIM_ENVOY_ACCESS_LOG": str(self.access_log),
                "ICLAIM_GATEWAY_ADDR": self.gateway,
                "ICLAIM_ENVOY_ADMIN_ADDR": f"127.0.0.1:{p.envoy_admin}",
                "ICLAIM_ROUTER_ADDR": f"127.0.0.1:{p.router}",
                "ICLAIM_ADAPTER_ADDR": f"127.0.0.1:{p.adapter}",
                "ICLAIM_AUDIT_ADDR": f"127.0.0.1:{p.audit}",
                "ICLAIM_BILLING_ADDR": f"127.0.0.1:{p.billing}",
                "ICLAIM_AUTHZ_ADDR": f"127.0.0.1:{p.authz}",
                "ICLAIM_AUTHZ_HTTP_ADDR": f"127.0.0.1:{p.authz_http}",
                "ICLAIM_ROUTER_TARGET": f"127.0.0.1:{p.router}",
                "ICLAIM_ADAPTER_TARGET": f"127.0.0.1:{p.adapter}",
                "ICLAIM_AUDIT_TARGET": f"127.0.0.1:{p.audit}",
                "ICLAIM_BILLING_TARGET": f"127.0.0.1:{p.billing}",
                "ICLAIM_AUTHZ_TARGET": f"127.0.0.1:{p.authz_http}",
                "ICLAIM_ROUTER_METRICS_PORT": str(p.router_metrics),
                "ICLAIM_ADAPTER_METRICS_PORT": str(p.adapter_metrics),
                "ICLAIM_AUDIT_METRICS_PORT": str(p.audit_metrics),
                "ICLAIM_BILLING_METRICS_PORT": str(p.billing_metrics),
                "ICLAIM_AUTHZ_METRICS_PORT": str(p.authz_metrics),
            }
        )
        env.update({k: v for k, v in self.extra_env.items() if not k.startswith(SANDBOX_ENV_PREFIXES)})
        env.pop(ADMIN_TOKEN_ENV, None)
        if spec is not None and spec.name in ADMIN_HOSTS and self.admin_token:
            env[ADMIN_TOKEN_ENV] = self.admin_token
        return env

    def sandbox_env(self) -> dict[str, str]:
        """A participant's environment: nothing of the hub's (no database,
        master key or admin token), only the sandbox's own knobs."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ICLAIM_")}
        merged = {**os.environ, **self.extra_env}
        env.update(
            {k: v for k, v in merged.items() if k.startswith(SANDBOX_ENV_PREFIXES) or k in SANDBOX_ENV_NAMES}
        )
        env.update({"PYTHONUNBUFFERED": "1", "ICLAIM_STATE_DIR": str(self.state_dir)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH", "")]))
        return env

    def sandbox_args(self) -> list[str]:
        return [
            "--credentials",
            str(self.sandbox_credentials),
            "--grpc",
            f"127.0.0.1:{self.ports.sandbox_grpc}",
            "--webhook",
            f"127.0.0.1:{self.ports.sandbox_webhook}",
            "--health",
            f"127.0.0.1:{self.ports.sandbox_health}",
            "--state-dir",
            str(self.state_dir / "sandbox"),
        ]

    # --- processes -------------------------------------------------------------------
    async def start_process(self, spec: ServiceSpec) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.logs_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by child
        try:
            args = self.sandbox_args() if spec is SANDBOX else []
            proc = await asyncio.create_subprocess_exec(
                # Stopped by the kernel if we are killed outright.
                *tied.command(os.getpid(), spec.module),
                *args,
                env=self.env(spec),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own session: a terminal's Ctrl-C reaches only us; we stop children in order.
                start_new_session=True,
            )
        finally:
            log.close()
        self.procs[spec.name] = proc

    async def wait_healthy(self, spec: ServiceSpec, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self.procs.get(spec.name)
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(
                    f"{spec.name} exited with {proc.returncode}; see {self.logs_dir / spec.name}.log"
                )
            if await self._healthy(spec):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{spec.name} not healthy after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    async def _healthy(self, spec: ServiceSpec) -> bool:
        if spec.grpc_port_field is None:
            return await self._envoy_ready()
        port = getattr(self.ports, spec.grpc_port_field)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            try:
                # types-grpcio-health-checking declares HealthStub without its methods.
                resp = await health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def _envoy_ready(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.ports.envoy_admin), 1.0
            )
        except (OSError, TimeoutError):
            return False
        try:
            # The admin endpoint answers 200 only to HTTP/1.1.
            writer.write(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 1.0)
            return b" 200 " in data.split(b"\r\n", 1)[0] + b" "
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def start(self) -> None:
        """Sandbox registration (its endpoints follow this run's ports), the
        services, Envoy, then the sandbox insurers: no claim gets in before
        the insurers it is pushed to are listening."""
        from iclaim_ops.devstack.participants import prepare_participants

        prepared = await prepare_participants(self)
        self.admin_token = prepared.admin_token
        self.sandbox_modes = prepared.sandbox_modes
        try:
            for spec in self.services:
                await self.start_process(spec)
            await asyncio.gather(*(self.wait_healthy(s) for s in self.services))
            await self.start_process(ENVOY)
            await self.wait_healthy(ENVOY)
            await self.start_process(SANDBOX)
            await self.wait_healthy(SANDBOX)
        except BaseException:
            await self.stop()
            raise

    def exited(self, name: str) -> int | None:
        """The exit code of a process that ended, None while it runs."""
        proc = self.procs.get(name)
        return None if proc is None else proc.returncode

    def pids(self) -> dict[str, int]:
        """Running children by name (for CPU accounting and environment checks)."""
        return {name: p.pid for name, p in self.procs.items() if p.returncode is None}

    async def restart(self, name: str) -> None:
        spec = next(s for s in (*self.services, ENVOY, SANDBOX) if s.name == name)
        await self.start_process(spec)
        await self.wait_healthy(spec)

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """`sig` to the process and everything it started, waiting until all are
        gone. Its group is not enough: the gateway's launcher runs Envoy in a
        session of its own, which would otherwise get only the parent-death
        SIGTERM (an orderly drain, not the crash asked for)."""
        proc = self.procs[name]
        tree = descendants(proc.pid)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        await proc.wait()
        await _gone(tree)

    async def stop(self) -> None:
        """SIGTERM in reverse start order (sandbox, gateway, then the services),
        SIGKILL after the grace."""
        order = [SANDBOX.name, ENVOY.name, *(s.name for s in reversed(self.services))]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.procs.clear()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, deepest first (Linux /proc; none elsewhere)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found.extend(descendants(child))
            found.append(child)
    return found


async def _gone(pids: list[int], timeout_s: float = 10.0) -> None:
    """Waits until none of `pids` exists (they are not our children to reap:
    their own parent, killed too, leaves them to init)."""
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} outlived SIGKILL")
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone for our purpose
    except (OSError, IndexError):
        return False
