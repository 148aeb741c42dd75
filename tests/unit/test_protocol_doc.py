"""docs/protocol.md (the normative public contract) against protos/iclaim/v1.

Two directions:
- every proto name the document uses exists in the protos, with the number,
  type and label the document gives it;
- every RPC of every service in protos/iclaim/v1 is named in the document, and
  each "request fields" column lists exactly the request message's fields.

The descriptors are compiled at test time with grpc_tools.protoc (no generated
Python code is imported). google/rpc/status.proto and error_details.proto are
compiled alongside, so the document's `google.rpc.Status` and `ErrorInfo` are
checked like our own names.

How the document writes names, and how each form is checked
------------------------------------------------------------
Only code spans (`...`), ```proto fences, RPC tables and service names in
headings/prose count as names; other fences (the string-to-sign template) and
plain prose words do not. Every code span must match exactly one rule below;
a span that matches none is reported, never skipped.

Proto names (checked against the descriptors):
  P1  `rpc X(Y) returns (Z)`, `message M { T f = N; }`, `service S { ... }` in
      ```proto fences or inline: method, types, field types/numbers/labels.
  P2  `/iclaim.v1.Service/Method`, `iclaim.v1.Service/Method`: that method.
  P3  `Message{ a, b: repeated T{ ... }, c: "literal" }`: fields of Message,
      recursively, with the declared label and type.
  P4  `CLAIM_STATE_` (ends in `_`): the value prefix of some enum.
  P5  UPPER_SNAKE: an enum value, in full or, after a full value of the same
      enum in the same paragraph/table row (or in that enum's definition
      paragraph), without its prefix (`RECEIVED` = 1); otherwise a gRPC status
      code name (taken from grpc.StatusCode) or the unique suffix of an enum
      value (`DELIVERED`). `= N` after it must be the value's number.
  P6  dotted: `iclaim.v1.X`; `google.…` (compiled types); `Message.field`,
      `Enum.VALUE`, `Service.Method`, `Rpc.field` (a field of the RPC's
      request); lower-case `a.b` is a field path (`adjustments.group`).
      `= N` and `(type)` / `(repeated `T`)` after it are checked.
  P7  `field: literal` (`available: false`): a field of some message.
  P8  PascalCase: a message, enum, service or RPC of iclaim.v1 (or an ALIASES
      entry, e.g. `ErrorInfo` = google.rpc.ErrorInfo).
  P9  camelCase: the proto3 JSON name of some field (webhook bodies, §10.3).
  P10 snake_case: a field. In a definition paragraph ("`Insurer`: `code`, ...")
      or an RPC table cell, the spans outside parentheses are fields of that
      very message (the request/response of the row's RPC); elsewhere, a field
      of some message.
  RPC tables (header "RPC"): the RPC belongs to the service named in the
  section heading; "request fields" lists exactly the request's fields
  ("optional `x`" must be proto3 optional); "returns" names the response type
  (or its fields); "stream of" iff the RPC is server-streaming.
  Prose/headings: a word ending in "Service" or "Endpoint" is a service.

Not proto names (explicit rules; every list entry must be used by the doc):
  N1  metadata / HTTP header names: first token lower-case with hyphens
      (`x-iclaim-nonce`, `grpc-status-details-bin`, `content-type: …`).
  N2  JOSE / JWK / media-type names: the JOSE list.
  N3  FHIR: a span right after "FHIR R4 " must be in FHIR_RESOURCES; FHIR
      element paths are listed in FHIR_PATHS.
  N4  commands (`iclaim admin …`, `make run`, `openssl …`) and their
      `--delivery` words (CLI_WORDS); HTTP request lines (`POST /path`).
  N5  environment variables: ENV_VARS.
  N6  string codes carried in string fields, keyed by those fields (the keys
      are checked to be string fields): error reasons, X12 codes, kinds.
  N7  principal codes (examples and reserved): PRINCIPAL_CODES.
  N8  values of the §3 worked example, error-message words, and JSON keys of
      credentials.json / `iclaim admin` output: listed.
  N9  literals: JSON (`{"…`, `"…`), digits, hex, `\\n`, character classes
      (`[A-Z0-9_]`), true/false, host:port, sandbox policy-number patterns
      (`DENY-…`), dev-stack output paths (`.iclaim/…`), and repository paths
      (`protos/…`, `tests/…`, `docs/…`), which must exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2 as d

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
PUBLIC_DIR = ROOT / "protos" / "iclaim" / "v1"
PACKAGE = "iclaim.v1"
EXTRA_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")

# ---- explicit exemptions (rules N2-N8) ----------------------------------------------------
JOSE = frozenset(
    {
        "alg",
        "enc",
        "kid",
        "cty",
        "zip",
        "ECDH-ES+A256KW",
        "RSA-OAEP-256",
        "A256GCM",
        "kty: OKP",
        "kty: EC",
        "application/fhir+json",
    }
)
FHIR_RESOURCES = frozenset({"Claim", "ClaimResponse"})
FHIR_PATHS = frozenset({"total.value", "insurance[0].coverage.identifier.value"})
COMMAND_PREFIXES = ("iclaim admin", "make run", "openssl ")
CLI_WORDS = frozenset({"grpc", "webhook", "pull"})  # `--delivery` values (§8, §11)
ENV_VARS = frozenset({"ICLAIM_DATABASE_URL", "ICLAIM_REDIS_URL"})
REASONS = frozenset(
    {
        "POLICY_NOT_FOUND",
        "INVALID_CLAIM_DOCUMENT",
        "PAYMENT_UNBALANCED",
        "DELIVERY_EXPIRED",
        "INSURER_UNAVAILABLE",
        "REQUEST_TOO_LARGE",
        "DECISION_CONFLICT",
        "TOO_MANY_DECISIONS",
        "TRANSACTION_REPEATED",
    }
)
# Values of string fields, keyed by the fields that carry them.
STRING_VALUES: dict[tuple[str, ...], frozenset[str]] = {
    (
        "google.rpc.ErrorInfo.reason",
        "iclaim.v1.Claim.status_reason",
        "iclaim.v1.PostDecisionRequest.reason_code",
        "iclaim.v1.DecisionResult.reason",
    ): REASONS,
    ("iclaim.v1.Adjustment.group",): frozenset({"CO", "PR", "OA", "PI", "CR"}),
    ("iclaim.v1.ProviderAdjustment.code",): frozenset({"WO", "FB", "L6", "72"}),
    ("iclaim.v1.StatementLine.kind",): frozenset({"INVOICE", "PAYMENT", "ADJUSTMENT", "APPROVAL"}),
    ("iclaim.v1.AuditTrailEntry.kind",): frozenset({"GATEWAY_CALL", "CLAIM_STATE_CHANGE"}),
}
PRINCIPAL_CODES = frozenset({"AIA", "MTL", "TLI", "TESTPULL", "ICLAIM"})
WORKED_EXAMPLE = frozenset(
    {
        "k1",
        "nnnnnnnnnnnnnnnn",
        "abc",
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE",
        "G8gFAcd7_yqmsD_EAUr2Y0GdTJ9IreMVZE0Y5hxIAjs",
    }
)
MESSAGE_WORDS = frozenset({"replay"})  # text an error message contains (§3)
# Keys of credentials.json and of `iclaim admin` output (§8, §11); `key_id` (§1) travels as
# the x-iclaim-key-id header, never in a message.
JSON_KEYS = frozenset({"key_id"})
ALIASES = {"ErrorInfo": "google.rpc.ErrorInfo"}
EXTERNAL_SERVICES = frozenset({"grpc.health.v1.Health"})  # gRPC health checking protocol

EXEMPT_LISTS: dict[str, frozenset[str]] = {
    "JOSE": JOSE,
    "FHIR_PATHS": FHIR_PATHS,
    "CLI_WORDS": CLI_WORDS,
    "ENV_VARS": ENV_VARS,
    "PRINCIPAL_CODES": PRINCIPAL_CODES,
    "WORKED_EXAMPLE": WORKED_EXAMPLE,
    "MESSAGE_WORDS": MESSAGE_WORDS,
    "JSON_KEYS": JSON_KEYS,
    **{f"STRING_VALUES[{keys[0]}]": values for keys, values in STRING_VALUES.items()},
}

GRPC_CODES = frozenset(c.name for c in grpc.StatusCode)
SCALARS = {
    d.FieldDescriptorProto.TYPE_INT32: "int32",
    d.FieldDescriptorProto.TYPE_INT64: "int64",
    d.FieldDescriptorProto.TYPE_UINT32: "uint32",
    d.FieldDescriptorProto.TYPE_UINT64: "uint64",
    d.FieldDescriptorProto.TYPE_SINT32: "sint32",
    d.FieldDescriptorProto.TYPE_SINT64: "sint64",
    d.FieldDescriptorProto.TYPE_BOOL: "bool",
    d.FieldDescriptorProto.TYPE_STRING: "string",
    d.FieldDescriptorProto.TYPE_BYTES: "bytes",
    d.FieldDescriptorProto.TYPE_DOUBLE: "double",
    d.FieldDescriptorProto.TYPE_FLOAT: "float",
}

SPAN = re.compile(r"`([^`]+)`")
PASCAL = re.compile(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*")
UPPER = re.compile(r"[A-Z][A-Z0-9_]*")
CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")
HEADER = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+(?=$|[\s:])")
METHOD_PATH = re.compile(r"/?iclaim\.v1\.(\w+)/(\w+)")
BRACE = re.compile(r"([\w.]+)\s*\{(.*)\}", re.S)
FIELD_LITERAL = re.compile(r"(\w+): (true|false|\d+|\".*\")")
LITERAL = re.compile(r"\d+|0x[0-9a-fA-F]+|\\n|\[.*\]|true|false|\d+\.\d+\.\d+\.\d+:\d+|[A-Z]+-.*\u2026")
ANNOTATION = re.compile(
    r"\s*(?:=\s*(?P<num>\d+)\s*)?(?:\(|:\s+)(?P<rep>repeated\s+)?"
    r"(?:`(?P<type>[\w.]+)(?:\s*\{[^`]*\})?`|(?P<scalar>" + "|".join(SCALARS.values()) + r")\b)"
)
NUMBER = re.compile(r"\s*=\s*(\d+)\b")
SERVICE_WORD = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Service|Endpoint)\b")


# ---- descriptors ----------------------------------------------------------------------------
def include_dirs() -> list[Path]:
    import google.type
    import grpc_tools

    return [Path(grpc_tools.__file__).parent / "_proto", Path(list(google.type.__path__)[0]).parents[1]]


def compile_descriptors(out_dir: Path) -> d.FileDescriptorSet:
    out = out_dir / "iclaim_v1.pb"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        *(f"-I{p}" for p in include_dirs()),
        f"--descriptor_set_out={out}",
        "--include_imports",
        *(str(p) for p in sorted(PUBLIC_DIR.glob("*.proto"))),
        *EXTRA_PROTOS,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"protoc failed on protos/iclaim/v1:\n{done.stderr}"
    return d.FileDescriptorSet.FromString(out.read_bytes())


@dataclass
class Api:
    messages: dict[str, d.DescriptorProto] = field(default_factory=dict)  # full name
    enums: dict[str, d.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, d.ServiceDescriptorProto] = field(default_factory=dict)
    public_services: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, fds: d.FileDescriptorSet) -> Api:
        api = cls()
        for f in fds.file:

            def walk(prefix: str, msgs: Iterable[d.DescriptorProto]) -> None:
                for m in msgs:
                    api.messages[f"{prefix}.{m.name}"] = m
                    for e in m.enum_type:
                        api.enums[f"{prefix}.{m.name}.{e.name}"] = e
                    walk(f"{prefix}.{m.name}", m.nested_type)

            walk(f.package, f.message_type)
            for e in f.enum_type:
                api.enums[f"{f.package}.{e.name}"] = e
            for s in f.service:
                api.services[f"{f.package}.{s.name}"] = s
                if f.package == PACKAGE and f.name.startswith("iclaim/v1/"):
                    api.public_services.append(f"{f.package}.{s.name}")
        return api

    def type_name(self, name: str) -> str | None:
        """Full name of a message or enum written as `Name`, `iclaim.v1.Name` or `google.x.Name`."""
        name = ALIASES.get(name, name)
        for cand in (f"{PACKAGE}.{name}", name):
            if cand in self.messages or cand in self.enums:
                return cand
        return None

    def methods(self, name: str) -> list[tuple[str, d.MethodDescriptorProto]]:
        return [(s, m) for s in self.public_services for m in self.services[s].method if m.name == name]

    def fields(self, message: str) -> dict[str, d.FieldDescriptorProto]:
        return {f.name: f for f in self.messages[message].field}

    def all_public_methods(self) -> set[tuple[str, str]]:
        return {(s, m.name) for s in self.public_services for m in self.services[s].method}


def field_type(f: d.FieldDescriptorProto) -> str:
    return f.type_name.lstrip(".") if f.type_name else SCALARS[f.type]


# ---- the checker ------------------------------------------------------------------------------
@dataclass
class Ctx:
    line: int
    before: str = ""
    after: str = ""
    depth: int = 0
    bind: str | None = None  # message whose fields the depth-0 snake_case spans are
    enum: str | None = None  # enum of the paragraph (definition or last full value)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    named_methods: set[tuple[str, str]] = field(default_factory=set)
    used: set[tuple[str, str]] = field(default_factory=set)


class Checker:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.r = Report()

    def bad(self, ctx: Ctx, span: str, why: str) -> None:
        self.r.problems.append(f"line {ctx.line}: `{span}`: {why}")

    # -- document structure --
    def check(self, text: str) -> Report:
        lines = text.splitlines()
        heading, para, para_line, i = "", list[str](), 0, 0

        def flush() -> None:
            nonlocal para
            if para:
                self.prose("\n".join(para), para_line)
            para = []

        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                flush()
                lang, start, i = line[3:].strip(), i + 1, i + 1
                while i < len(lines) and not lines[i].startswith("```"):
                    i += 1
                if lang == "proto":
                    self.proto("\n".join(lines[start:i]), Ctx(start + 1))
                i += 1
                continue
            if line.startswith("#"):
                flush()
                heading = line.lstrip("#").strip()
                self.prose(heading, i + 1)
            elif line.startswith("|"):
                flush()
                start = i
                while i + 1 < len(lines) and lines[i + 1].startswith("|"):
                    i += 1
                self.table(lines[start : i + 1], start + 1, heading)
            elif not line.strip():
                flush()
            else:
                if re.match(r"\s*[-*] ", line):
                    flush()
                if not para:
                    para_line = i + 1
                para.append(line[2:] if line.startswith("> ") else line.lstrip(">"))
            i += 1
        flush()
        return self.r

    def spans(self, text: str, line: int) -> list[tuple[str, Ctx]]:
        blank = SPAN.sub(lambda m: " " * len(m.group(0)), text)
        out = []
        for m in SPAN.finditer(text):
            depth = blank[: m.start()].count("(") - blank[: m.start()].count(")")
            ctx = Ctx(
                line + text[: m.start()].count("\n"),
                " ".join(text[: m.start()].split()),
                text[m.end() :],
                depth,
            )
            out.append((" ".join(m.group(1).split()), ctx))
        return out

    def service_words(self, text: str, line: int, report: bool = True) -> list[str]:
        found = []
        for w in SERVICE_WORD.findall(SPAN.sub(" ", text)):
            if f"{PACKAGE}.{w}" in self.api.services:
                found.append(f"{PACKAGE}.{w}")
            elif report:
                self.bad(Ctx(line), w, "names a service that protos/iclaim/v1 does not define")
        return found

    def prose(self, text: str, line: int, bind: str | None = None) -> None:
        self.service_words(text, line)
        enum = None
        head = re.match(r"(?:[-*]\s+)?(?:\*\*[^*]*\*\*\s*)?`([A-Z]\w*)`:\s", text)
        if head and bind is None:
            full = self.api.type_name(head.group(1))
            if full in self.api.messages:
                bind = full
            elif full in self.api.enums:
                enum = full
        for span, ctx in self.spans(text, line):
            ctx.bind = bind if ctx.depth == 0 else None
            ctx.enum = enum
            self.span(span, ctx)
            enum = ctx.enum  # a full enum value sets the prefix for the short ones after it

    def table(self, rows: list[str], line: int, heading: str) -> None:
        def cells(row: str) -> list[str]:
            return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]

        header = cells(rows[0])
        for c in header:
            self.prose(c, line)
        cols = [SPAN.sub(lambda m: m.group(1), c).strip().lower() for c in header]
        body = [(n, r) for n, r in enumerate(rows[1:], start=line + 1) if not re.fullmatch(r"[|\s:-]+", r)]
        for n, row in body:
            cs = cells(row)
            if "rpc" in cols and len(cs) != len(cols):
                self.bad(Ctx(n), row.strip(), f"RPC table row has {len(cs)} cells, header {len(cols)}")
            elif "rpc" in cols:
                self.rpc_row(dict(zip(cols, cs, strict=True)), n, heading)
            else:
                for c in cs:
                    self.prose(c, n)

    def rpc_row(self, row: dict[str, str], line: int, heading: str) -> None:
        name_spans = self.spans(row["rpc"], line)
        if not name_spans:
            self.bad(Ctx(line), row["rpc"], "RPC table row without an RPC name")
            return
        name = name_spans[0][0]
        services = self.service_words(heading, line, report=False) or list(self.api.public_services)
        found = [(s, m) for s, m in self.api.methods(name) if s in services]
        if not found:
            where = " or ".join(services)
            self.bad(Ctx(line), name, f"no such RPC in {where}")
            for col, cell in row.items():
                if col != "rpc":
                    self.prose(cell, line)
            return
        svc, method = found[0]
        self.r.named_methods.add((svc, method.name))
        inp, outp = method.input_type.lstrip("."), method.output_type.lstrip(".")
        for col, cell in row.items():
            if col == "rpc":
                continue
            if col == "request fields":
                self.request_cell(cell, line, name, inp)
            elif col == "returns":
                self.returns_cell(cell, line, name, outp, method.server_streaming)
            else:
                self.prose(cell, line)

    def request_cell(self, cell: str, line: int, rpc: str, inp: str) -> None:
        listed = set()
        fields = self.api.fields(inp)
        for span, ctx in self.spans(cell, line):
            if ctx.depth == 0 and SNAKE.fullmatch(span):
                listed.add(span)
                f = fields.get(span)
                if f is None:
                    self.bad(ctx, span, f"{rpc}'s request {inp} has no such field")
                    continue
                if ctx.before.endswith("optional") and not f.proto3_optional:
                    self.bad(ctx, span, f"documented optional, but {inp}.{span} is not proto3 optional")
                self.annotation(f, f"{inp}.{span}", span, ctx)
            else:
                self.span(span, ctx)
        missing = sorted(set(fields) - listed)
        if missing:
            self.bad(Ctx(line), rpc, f"'request fields' omits {inp} fields {missing}")

    def returns_cell(self, cell: str, line: int, rpc: str, outp: str, streaming: bool) -> None:
        if cell.lower().startswith("stream") != streaming:
            self.bad(
                Ctx(line),
                rpc,
                f"'returns' says {'not ' if streaming else ''}a stream, the proto "
                f"says {'' if streaming else 'not '}server-streaming",
            )
        spans = self.spans(cell, line)
        lists_fields = bool(spans) and spans[0][1].depth == 0 and bool(SNAKE.fullmatch(spans[0][0]))
        listed = set()
        for k, (span, ctx) in enumerate(spans):
            if k == 0 and ctx.depth == 0 and (PASCAL.fullmatch(span) or BRACE.fullmatch(span)):
                head = BRACE.fullmatch(span)
                written = head.group(1) if head else span
                if self.api.type_name(written) != outp:
                    self.bad(ctx, span, f"{rpc} returns {outp}")
                self.span(span, ctx)
                continue
            ctx.bind = outp if ctx.depth == 0 else None
            if ctx.bind and SNAKE.fullmatch(span):
                listed.add(span)
            self.span(span, ctx)
        missing = sorted(set(self.api.fields(outp)) - listed)
        if lists_fields and missing:
            self.bad(Ctx(line), rpc, f"'returns' lists fields of {outp} but omits {missing}")

    # -- proto snippets (rule P1) --
    def proto(self, src: str, ctx: Ctx) -> None:
        src = re.sub(r"//[^\n]*", "", src)
        rest = src
        for m in re.finditer(r"\bservice\s+(\w+)\s*\{([^{}]*)\}", src):
            svc = f"{PACKAGE}.{m.group(1)}"
            rest = rest.replace(m.group(0), "", 1)
            if svc not in self.api.services:
                self.bad(ctx, f"service {m.group(1)}", "no such service in protos/iclaim/v1")
                continue
            body, shown = m.group(2), set()
            for r in re.finditer(r"rpc\s+(\w+)\s*\([^)]*\)\s*returns\s*\([^)]*\)\s*;", body):
                self.rpc_snippet(r.group(0), ctx, svc)
                shown.add(r.group(1))
                body = body.replace(r.group(0), "", 1)
            if body.strip():
                self.bad(ctx, body.strip(), "unparsed text in service snippet")
            left_out = sorted({x.name for x in self.api.services[svc].method} - shown)
            if left_out:
                self.bad(ctx, f"service {m.group(1)}", f"snippet omits RPCs {left_out}")
        for m in re.finditer(r"\bmessage\s+(\w+)\s*\{([^{}]*)\}", src):
            self.message_snippet(m.group(1), m.group(2), ctx)
            rest = rest.replace(m.group(0), "", 1)
        for m in re.finditer(r"\benum\s+(\w+)\s*\{([^{}]*)\}", src):
            full = f"{PACKAGE}.{m.group(1)}"
            if full not in self.api.enums:
                self.bad(ctx, f"enum {m.group(1)}", "no such enum")
            else:
                values = {v.name: v.number for v in self.api.enums[full].value}
                for v in re.finditer(r"(\w+)\s*=\s*(\d+)", m.group(2)):
                    if values.get(v.group(1)) != int(v.group(2)):
                        self.bad(ctx, v.group(0), f"not a value of {full} with that number")
            rest = rest.replace(m.group(0), "", 1)
        for m in re.finditer(r"rpc\s+\w+\s*\([^)]*\)\s*returns\s*\([^)]*\)\s*;?", rest):
            self.rpc_snippet(m.group(0), ctx, None)
            rest = rest.replace(m.group(0), "", 1)
        rest = re.sub(r"\b(syntax|package|import|option)\b[^;]*;", "", rest)
        if rest.strip():
            self.bad(ctx, rest.strip(), "unparsed proto text")

    def rpc_snippet(self, text: str, ctx: Ctx, svc: str | None) -> None:
        m = re.match(
            r"rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)", text
        )
        if not m:
            self.bad(ctx, text, "unparsed rpc")
            return
        name, cs, inp, ss, outp = m.groups()
        found = [(s, meth) for s, meth in self.api.methods(name) if svc is None or s == svc]
        if not found:
            self.bad(ctx, text, f"no RPC {name} in {svc or 'any public service'}")
            return
        s, meth = found[0]
        self.r.named_methods.add((s, name))
        if self.api.type_name(inp) != meth.input_type.lstrip(".") or bool(cs) != meth.client_streaming:
            self.bad(ctx, text, f"request is {meth.input_type.lstrip('.')}")
        if self.api.type_name(outp) != meth.output_type.lstrip(".") or bool(ss) != meth.server_streaming:
            self.bad(ctx, text, f"response is {meth.output_type.lstrip('.')}")

    def message_snippet(self, name: str, body: str, ctx: Ctx) -> None:
        full = self.api.type_name(name)
        if full not in self.api.messages:
            self.bad(ctx, f"message {name}", "no such message")
            return
        fields = self.api.fields(full)
        shown = set()
        for decl in filter(None, (x.strip() for x in body.split(";"))):
            m = re.fullmatch(r"(repeated\s+|optional\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)", decl)
            if not m:
                self.bad(ctx, decl, f"unparsed field in message {name}")
                continue
            label, typ, fname, num = m.groups()
            shown.add(fname)
            f = fields.get(fname)
            if f is None:
                self.bad(ctx, decl, f"{full} has no field {fname}")
                continue
            want = self.api.type_name(typ) or typ
            if field_type(f) != want or f.number != int(num):
                self.bad(ctx, decl, f"proto has {field_type(f)} {fname} = {f.number}")
            if (label or "").strip() == "repeated" and f.label != d.FieldDescriptorProto.LABEL_REPEATED:
                self.bad(ctx, decl, "not repeated in the proto")
        if set(fields) - shown:
            self.bad(ctx, f"message {name}", f"snippet omits fields {sorted(set(fields) - shown)}")

    # -- one code span --
    def span(self, s: str, ctx: Ctx) -> None:
        for list_name, entries in EXEMPT_LISTS.items():
            if s in entries:
                self.r.used.add((list_name, s))
                return
        if ctx.before.endswith("FHIR R4"):
            if s not in FHIR_RESOURCES:
                self.bad(ctx, s, "not a FHIR R4 resource this protocol carries (FHIR_RESOURCES)")
            return
        if re.match(r"(protos|tests|docs)/", s):
            if not (ROOT / s).exists():
                self.bad(ctx, s, "no such path in the repository")
            return
        if (
            s.startswith((".iclaim/", '{"', '"'))
            or s.startswith(COMMAND_PREFIXES)
            or re.match(r"(GET|POST|PUT|DELETE) ", s)
            or HEADER.match(s)
            or LITERAL.fullmatch(s)
        ):
            return
        if re.match(r"(rpc|service|message|enum)\s", s):
            self.proto(s, ctx)
            return
        if m := METHOD_PATH.fullmatch(s):
            svc = f"{PACKAGE}.{m.group(1)}"
            known = svc in self.api.services and any(
                x.name == m.group(2) for x in self.api.services[svc].method
            )
            if not known:
                self.bad(ctx, s, "no such method in protos/iclaim/v1")
            else:
                self.r.named_methods.add((svc, m.group(2)))
            return
        if m := BRACE.fullmatch(s):
            self.brace(m.group(1), m.group(2), s, ctx)
            return
        if UPPER.fullmatch(s):
            self.upper(s, ctx)
            return
        if DOTTED.fullmatch(s):
            self.dotted(s, ctx)
            return
        if m := FIELD_LITERAL.fullmatch(s):
            if not any(m.group(1) in self.api.fields(msg) for msg in self.api.messages):
                self.bad(ctx, s, "no message has this field")
            return
        if PASCAL.fullmatch(s):
            self.pascal(s, ctx)
            return
        if CAMEL.fullmatch(s):
            if not any(f.json_name == s for msg in self.api.messages.values() for f in msg.field):
                self.bad(ctx, s, "not the proto3 JSON name of any field")
            return
        if SNAKE.fullmatch(s):
            if ctx.bind:
                f = self.api.fields(ctx.bind).get(s)
                if f is None:
                    self.bad(ctx, s, f"{ctx.bind} has no such field")
                else:
                    self.annotation(f, f"{ctx.bind}.{s}", s, ctx)
            elif not any(s in self.api.fields(msg) for msg in self.api.messages):
                self.bad(ctx, s, "no message in protos/iclaim/v1 has this field")
            return
        self.bad(ctx, s, "not a proto name and no exemption rule covers it")

    def pascal(self, s: str, ctx: Ctx) -> None:
        full = f"{PACKAGE}.{s}"
        methods = self.api.methods(s)
        for svc, _ in methods:
            self.r.named_methods.add((svc, s))
        if not (methods or self.api.type_name(s) or full in self.api.services):
            self.bad(ctx, s, "no such message, enum, service or RPC in protos/iclaim/v1")

    def upper(self, s: str, ctx: Ctx) -> None:
        values = {v.name: (e, v.number) for e, en in self.api.enums.items() for v in en.value}
        if s.endswith("_"):
            if not any(v.startswith(s) for v in values):
                self.bad(ctx, s, "no enum has values with this prefix")
            return
        hit = values.get(s)
        if hit:
            ctx.enum = hit[0]
        elif ctx.enum:
            prefix = self._prefix(ctx.enum)
            hit = values.get(prefix + s)
            if hit is None and s not in GRPC_CODES:
                self.bad(ctx, s, f"{ctx.enum} has no value {prefix}{s}")
                return
        if hit is None:
            if s in GRPC_CODES:
                return
            suffixed = [v for v in values if v.endswith("_" + s)]
            if len(suffixed) != 1:
                self.bad(
                    ctx,
                    s,
                    "not an enum value, a gRPC code, or a listed string code"
                    + (f" (ambiguous: {suffixed})" if suffixed else ""),
                )
                return
            hit = values[suffixed[0]]
        if (n := NUMBER.match(ctx.after)) and int(n.group(1)) != hit[1]:
            self.bad(ctx, s, f"the proto gives it number {hit[1]}")

    def _prefix(self, enum: str) -> str:
        names = [v.name for v in self.api.enums[enum].value]
        prefix = names[0]
        for n in names[1:]:
            while not n.startswith(prefix):
                prefix = prefix[:-1]
        return prefix[: prefix.rfind("_") + 1]

    def dotted(self, s: str, ctx: Ctx) -> None:
        if s in EXTERNAL_SERVICES:
            return
        parts = s.split(".")
        if s.startswith(f"{PACKAGE}."):
            parts = parts[2:]
        elif parts[0][0].islower():
            if self.api.type_name(s) or s in self.api.services:
                return
            if parts[0] in ("google", "grpc"):
                self.bad(ctx, s, "no such external type")
                return
            self.field_path(parts, s, ctx)
            return
        head, rest = parts[0], parts[1:]
        if not rest:
            self.pascal(head, ctx)
            return
        full = self.api.type_name(head)
        if len(rest) == 1 and full in self.api.enums:
            self.upper(rest[0], Ctx(ctx.line, after=ctx.after, enum=full))
            return
        if full in self.api.messages:
            msg = full
        elif f"{PACKAGE}.{head}" in self.api.services and len(rest) == 1:
            svc = f"{PACKAGE}.{head}"
            if any(m.name == rest[0] for m in self.api.services[svc].method):
                self.r.named_methods.add((svc, rest[0]))
            else:
                self.bad(ctx, s, f"{svc} has no RPC {rest[0]}")
            return
        elif methods := self.api.methods(head):
            msg = methods[0][1].input_type.lstrip(".")
        else:
            self.bad(ctx, s, f"no message, enum, service or RPC named {head}")
            return
        for k, part in enumerate(rest):
            f = self.api.fields(msg).get(part)
            if f is None:
                self.bad(ctx, s, f"{msg} has no field {part}")
                return
            if k == len(rest) - 1:
                self.annotation(f, f"{msg}.{part}", s, ctx)
            elif f.type_name.lstrip(".") in self.api.messages:
                msg = f.type_name.lstrip(".")
            else:
                self.bad(ctx, s, f"{msg}.{part} is not a message")
                return

    def field_path(self, parts: list[str], s: str, ctx: Ctx) -> None:
        def resolves(msg: str, rest: list[str]) -> bool:
            f = self.api.fields(msg).get(rest[0])
            if f is None:
                return False
            if len(rest) == 1:
                return True
            sub = f.type_name.lstrip(".")
            return sub in self.api.messages and resolves(sub, rest[1:])

        if not any(resolves(m, parts) for m in self.api.messages):
            self.bad(ctx, s, "no message has this field path")

    def brace(self, head: str, body: str, s: str, ctx: Ctx) -> None:
        full = self.api.type_name(head)
        if full not in self.api.messages:
            self.bad(ctx, s, f"no message {head}")
            return
        if full.startswith(PACKAGE):
            self.pascal(head, ctx)
        fields = self.api.fields(full)
        items, depth, cur = [], 0, ""
        for ch in body:
            depth += (ch == "{") - (ch == "}")
            if ch == "," and depth == 0:
                items.append(cur.strip())
                cur = ""
            else:
                cur += ch
        items.append(cur.strip())
        for item in filter(None, items):
            m = re.fullmatch(r"(\w+)(?:\s*:\s*(.+))?", item, re.S)
            if not m or m.group(1) not in fields:
                self.bad(ctx, s, f"{full} has no field {item.split(':')[0].strip()!r}")
                continue
            f, value = fields[m.group(1)], (m.group(2) or "").strip()
            if not value:
                continue
            if value.startswith('"') or LITERAL.fullmatch(value):
                if value.startswith('"') and f.type != d.FieldDescriptorProto.TYPE_STRING:
                    self.bad(ctx, s, f"{full}.{f.name} is not a string")
                continue
            t = re.fullmatch(r"(repeated\s+)?([\w.]+)\s*(\{(.*)\})?", value, re.S)
            if not t:
                self.bad(ctx, s, f"cannot read {item!r}")
                continue
            if (self.api.type_name(t.group(2)) or t.group(2)) != field_type(f):
                self.bad(ctx, s, f"{full}.{f.name} is {field_type(f)}, not {t.group(2)}")
            if t.group(1) and f.label != d.FieldDescriptorProto.LABEL_REPEATED:
                self.bad(ctx, s, f"{full}.{f.name} is not repeated")
            if t.group(3):
                self.brace(t.group(2), t.group(4), s, ctx)

    def annotation(self, f: d.FieldDescriptorProto, where: str, s: str, ctx: Ctx) -> None:
        """`= N`, `(type)` and `(repeated `T`)` right after a field reference."""
        m = ANNOTATION.match(ctx.after)
        num = m.group("num") if m else (n.group(1) if (n := NUMBER.match(ctx.after)) else None)
        if num is not None and int(num) != f.number:
            self.bad(ctx, s, f"{where} is field number {f.number}, not {num}")
        if not m:
            return
        written = m.group("scalar") or self.api.type_name(m.group("type") or "")
        if written is None:
            return  # e.g. (`INVOICE_STATUS_SUBMITTED` = 1, ...): not a type annotation
        if written != field_type(f):
            self.bad(ctx, s, f"{where} is {field_type(f)}, not {written}")
        if m.group("rep") and f.label != d.FieldDescriptorProto.LABEL_REPEATED:
            self.bad(ctx, s, f"{where} is not repeated")


def missing_methods(report: Report, api: Api) -> list[str]:
    return sorted(f"/{s}/{m}" for s, m in api.all_public_methods() - report.named_methods)


# ---- tests ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Api:
    return Api.build(compile_descriptors(tmp_path_factory.mktemp("descriptors")))


@pytest.fixture(scope="module")
def report(api: Api) -> Report:
    return Checker(api).check(DOC.read_text(encoding="utf-8"))


def test_every_name_in_the_document_exists_in_the_protos(report: Report) -> None:
    assert not report.problems, (
        "docs/protocol.md names things protos/iclaim/v1 lacks (or that no rule covers):\n  "
        + "\n  ".join(report.problems)
    )


def test_every_public_rpc_is_in_the_document(api: Api, report: Report) -> None:
    assert api.public_services, "no services compiled from protos/iclaim/v1"
    missing = missing_methods(report, api)
    assert not missing, "RPCs in protos/iclaim/v1 that docs/protocol.md does not name:\n  " + "\n  ".join(
        missing
    )


def test_every_exemption_is_used_and_string_codes_sit_in_string_fields(api: Api, report: Report) -> None:
    unused = sorted(
        f"{name}: {entry}"
        for name, entries in EXEMPT_LISTS.items()
        for entry in entries
        if (name, entry) not in report.used
    )
    assert not unused, f"exemptions the document no longer needs (remove them): {unused}"
    for fields in STRING_VALUES:
        for ref in fields:
            msg, _, name = ref.rpartition(".")
            f = api.fields(msg).get(name) if msg in api.messages else None
            assert f is not None and f.type == d.FieldDescriptorProto.TYPE_STRING, ref
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", r) for r in REASONS)


def test_section_numbers_are_stable() -> None:
    numbers = [int(m) for m in re.findall(r"^## (\d+)\. ", DOC.read_text(encoding="utf-8"), re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 12, numbers


SYNTHETIC = """\
## 5. ClaimService (hospitals)

| RPC | request fields | returns |
|---|---|---|
| `CancelClaim` | `transaction_id` (int64), `reason`, `no_such_field` | `Claim` |
| `DeleteEverything` | `transaction_id` | `Claim` |
| `GetClaim` | `transaction_id` | stream of `Claim` |

`Claim`: `transaction_id`, `not_a_claim_field`. `Claim.state` = 7, `Insurer.delivery`
(`InsurerHealth`), `CLAIM_STATE_EXPLODED`, `/iclaim.v1.ClaimService/Nope`,
`ClaimState`: `CLAIM_STATE_UNSPECIFIED` = 0, `RECEIVED` = 2, `TELEPORTED` = 10.

Hospitals call FrobnicateService: `InsurerService.Teleport`, `EncryptionKey{ kid, colour }`,
`some-header`, `wibble_wobble`, `claimReff`, `NoSuchMessage`, `??`.

```proto
service InsurerEndpoint {
  rpc ReceiveClaim(ClaimDelivery) returns (ReceiveClaimResponse);
}
message ReceiveClaimRequest { ClaimDelivery delivery = 2; }
```
"""


def test_the_checker_catches_names_the_protos_lack(api: Api) -> None:
    r = Checker(api).check(SYNTHETIC)
    text = "\n".join(r.problems)
    expected = [
        "`no_such_field`: CancelClaim's request iclaim.v1.CancelClaimRequest has no such field",
        "`transaction_id`: iclaim.v1.CancelClaimRequest.transaction_id is string, not int64",
        "`DeleteEverything`: no such RPC in iclaim.v1.ClaimService",
        "`GetClaim`: 'returns' says a stream",
        "`not_a_claim_field`: iclaim.v1.Claim has no such field",
        "`Claim.state`: iclaim.v1.Claim.state is field number 5, not 7",
        "`Insurer.delivery`: iclaim.v1.Insurer.delivery is iclaim.v1.DeliveryMode, not "
        "iclaim.v1.InsurerHealth",
        "`CLAIM_STATE_EXPLODED`",
        "`/iclaim.v1.ClaimService/Nope`: no such method",
        "`RECEIVED`: the proto gives it number 1",
        "`TELEPORTED`: iclaim.v1.ClaimState has no value CLAIM_STATE_TELEPORTED",
        "`FrobnicateService`: names a service that protos/iclaim/v1 does not define",
        "`NoSuchMessage`: no such message, enum, service or RPC",
        "`InsurerService.Teleport`: iclaim.v1.InsurerService has no RPC Teleport",
        "`EncryptionKey{ kid, colour }`: iclaim.v1.EncryptionKey has no field 'colour'",
        "`wibble_wobble`: no message in protos/iclaim/v1 has this field",
        "`claimReff`: not the proto3 JSON name",
        "`??`: not a proto name and no exemption rule covers it",
        "request is iclaim.v1.ReceiveClaimRequest",
        "proto has iclaim.v1.ClaimDelivery delivery = 1",
        "snippet omits fields ['accepts_decision']",
    ]
    for e in expected:
        assert e in text, f"checker missed {e!r}; it reported:\n{text}"
    assert "some-header" not in text  # rule N1: a header name, not a proto name
    assert len(r.problems) == len(expected), text
    # The reverse direction: a document that names only these RPCs misses the rest.
    missing = missing_methods(r, api)
    assert "/iclaim.v1.ClaimService/ListInsurers" in missing
    assert "/iclaim.v1.AuditTrailService/GetAuditCheckpoint" in missing
    assert "/iclaim.v1.ClaimService/CancelClaim" not in missing
    assert "/iclaim.v1.InsurerEndpoint/ReceiveClaim" not in missing


def test_a_correct_snippet_passes(api: Api) -> None:
    ok = """\
## 6. InsurerService (insurers)

| RPC | request fields | returns |
|---|---|---|
| `GetHospital` | `hospital_code` | `Hospital{ code, display_name, keys }` |

`Hospital{ code, display_name, keys: repeated EncryptionKey{ kid, jwk, current } }`.

`ProviderAdjustment.hospital_code` = 4 (string), `INVOICE_STATUS_VOID` = 6, `x-iclaim-nonce`.
"""
    r = Checker(api).check(ok)
    assert r.problems == []
    assert r.named_methods == {("iclaim.v1.InsurerService", "GetHospital")}
