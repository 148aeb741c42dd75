"""`iclaim`: talk to the clearinghouse as a hospital or an insurer. With the hub
installed, the operator commands (`up`, `audit verify`, …) join in."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from iclaim import audit_cli, billing_cli, insurer_cli
from iclaim.cli_groups import CommandGroups, load_plugins
from iclaim.client.credentials import DEV_CREDENTIALS, load_dev_credentials


def _print_claim(claim: Any) -> None:
    print(json.dumps(MessageToDict(claim, preserving_proto_field_name=True), indent=2))


async def _insurers(args: argparse.Namespace) -> int:
    from iclaim.client.hospital import HospitalClient

    async with HospitalClient(load_dev_credentials(args.as_, args.credentials)) as client:
        for ins in await client.list_insurers():
            line = "LIFE" if ins.line == 1 else "NON_LIFE"
            kids = ",".join(k.kid for k in ins.keys)
            status = "available" if ins.available else "unavailable"
            print(f"{ins.code:<12} {line:<9} {status:<11} {ins.display_name}  keys={kids}")
    return 0


async def _submit(args: argparse.Namespace) -> int:
    from iclaim.client.hospital import HospitalClient
    from iclaim.fhir.claim import parse_claim

    raw = Path(args.file).read_bytes()
    parsed = parse_claim(raw)
    claim_ref = args.claim_ref or parsed.claim_ref
    async with HospitalClient(load_dev_credentials(args.as_, args.credentials)) as client:
        claim = await client.submit_claim(
            raw,
            insurer_code=args.insurer,
            claim_ref=claim_ref,
            amount_satang=parsed.total_satang,
            decision_timeout_s=args.timeout,
        )
        _print_claim(claim)
        if claim.decision_envelope:
            opened = client.open_decision(claim)
            print(json.dumps(opened.claim_response, indent=2, ensure_ascii=False))
    return 0


async def _claim(args: argparse.Namespace) -> int:
    from iclaim.client.hospital import HospitalClient

    async with HospitalClient(load_dev_credentials(args.as_, args.credentials)) as client:
        if args.claim_cmd == "get":
            _print_claim(await client.get_claim(args.transaction_id))
        else:
            async for claim in client.watch_claim(args.transaction_id):
                _print_claim(claim)
    return 0


def _sample_claim(args: argparse.Namespace) -> int:
    """Writes a synthetic FHIR R4 Claim (no real patient) for trying `submit`."""
    import secrets

    from iclaim.fhir.claim import synthetic_claim

    creds = load_dev_credentials(args.as_, args.credentials)
    claim_ref = args.claim_ref or f"SAMPLE-{secrets.token_hex(4)}"
    doc = synthetic_claim(creds.code, args.insurer, claim_ref, args.policy, args.amount_satang)
    sys.stdout.write(doc.decode() + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclaim", description=__doc__)
    parser.add_argument("--credentials", type=Path, default=DEV_CREDENTIALS, help="credentials.json to use")
    parser.add_argument("--as", dest="as_", default=None, help="principal code (default: first dev hospital)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    groups = CommandGroups(sub)

    ins = sub.add_parser("insurers", help="list the insurer directory")
    ins.set_defaults(func=lambda a: asyncio.run(_insurers(a)))

    submit = sub.add_parser("submit", help="seal and submit a FHIR Claim JSON file")
    submit.add_argument("file")
    submit.add_argument("--insurer", required=True)
    submit.add_argument("--claim-ref", default=None, help="default: the Claim's identifier")
    submit.add_argument("--timeout", type=float, default=30.0, help="wait for decision (s)")
    submit.set_defaults(func=lambda a: asyncio.run(_submit(a)))

    sample = sub.add_parser("sample-claim", help="print a synthetic FHIR Claim to try submit")
    sample.add_argument("--insurer", default="AIA")
    sample.add_argument("--policy", default="POL-0001", help="DENY-…, REVIEW-…, LIMIT-<satang>-…")
    sample.add_argument("--amount-satang", type=int, default=125_000)
    sample.add_argument("--claim-ref", default=None)
    sample.set_defaults(func=_sample_claim)

    claim = sub.add_parser("claim", help="look at a claim")
    claim_sub = claim.add_subparsers(dest="claim_cmd", required=True)
    for name in ("get", "watch"):
        p = claim_sub.add_parser(name)
        p.add_argument("transaction_id")
        p.set_defaults(func=lambda a: asyncio.run(_claim(a)))

    audit_cli.register(groups)
    billing_cli.register(groups)
    insurer_cli.register(groups)
    load_plugins(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # CLI boundary: one line, not a traceback
        import grpc

        if isinstance(exc, grpc.aio.AioRpcError):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
