"""Generates the Python stubs (code + .pyi) from protos/: `make proto` runs it.

iclaim.v1 (the public contract) lands inside the SDK (sdk/iclaim/v1) and
iclaim_hub.internal.v1 inside the hub; neither is ever committed or edited.
--mypy_grpc_out (protoc-gen-mypy_grpc, from mypy-protobuf beside this Python)
writes typed *_pb2_grpc.pyi stubs: grpcio-tools has no pyi output for the gRPC
modules, and without them every Stub/add_*_to_server call is untyped under mypy --strict.

Usage: python tools/gen_protos.py [REPO_ROOT]   (default: the current directory)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import google.type
import grpc_tools
from grpc_tools import protoc

OUTPUTS = (
    ("protos/iclaim/v1", "sdk", "sdk/iclaim/v1"),
    ("protos/iclaim_hub/internal/v1", ".", "iclaim_hub/internal"),
)


def generate(root: Path) -> None:
    # protoc finds its plugins on PATH: use the ones installed beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    includes = [
        f"-I{root / 'protos'}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        f"-I{Path(google.type.__path__[0]).parent.parent}",
    ]
    for src, out, generated in OUTPUTS:
        shutil.rmtree(root / generated, ignore_errors=True)
        files = sorted(str(p) for p in (root / src).glob("*.proto"))
        dest = str(root / out)
        args = [
            "protoc",
            *includes,
            f"--python_out={dest}",
            f"--pyi_out={dest}",
            f"--grpc_python_out={dest}",
            f"--mypy_grpc_out={dest}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {src}")
    for pkg in ("sdk/iclaim/v1", "iclaim_hub/internal", "iclaim_hub/internal/v1"):
        (root / pkg / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
