"""The sandbox's credentials file: the insurer kit's format
(`iclaim.insurer.credentials`) plus, per insurer, `"delivery": "grpc" |
"webhook" | "pull"` — how the registry reaches it, so which listener serves it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from iclaim.insurer.credentials import CredentialsError, InsurerCredentials, load_all_insurer_credentials

MODES = ("grpc", "webhook", "pull")


@dataclass(frozen=True)
class SandboxInsurers:
    grpc: tuple[InsurerCredentials, ...]
    webhook: tuple[InsurerCredentials, ...]
    pull: tuple[InsurerCredentials, ...]

    def counts(self) -> dict[str, int]:
        return {"grpc": len(self.grpc), "webhook": len(self.webhook), "pull": len(self.pull)}


def load_sandbox(path: Path) -> SandboxInsurers:
    """Every insurer of the file by its delivery mode; CredentialsError (naming
    the field, never a secret) when the file is unusable."""
    insurers = load_all_insurer_credentials(path)  # checks the file first
    entries = json.loads(Path(path).read_text(encoding="utf-8"))["insurers"]
    modes: dict[str, str] = {}
    for entry in entries:
        mode = entry.get("delivery")
        if mode not in MODES:
            raise CredentialsError(f"insurer {entry['code']}: delivery must be grpc, webhook or pull")
        modes[entry["code"]] = mode
    by_mode: dict[str, list[InsurerCredentials]] = {m: [] for m in MODES}
    for ins in insurers:
        if modes[ins.code] != "pull" and not ins.endpoint_key_id:
            raise CredentialsError(f"insurer {ins.code}: a push insurer needs endpoint_key_id")
        by_mode[modes[ins.code]].append(ins)
    return SandboxInsurers(tuple(by_mode["grpc"]), tuple(by_mode["webhook"]), tuple(by_mode["pull"]))
