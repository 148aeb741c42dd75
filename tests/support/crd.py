"""Validating custom resources (prometheus-operator) against the CRD schemas
kept in tests/vectors/prometheus-operator, as strictly as kubernetes-validate
treats built-in kinds: a field the schema does not define is an error."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[1] / "vectors" / "prometheus-operator"
GROUP = "monitoring.coreos.com"


def _strict(schema: Any, *, top: bool = True) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v, top=False) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        if top:  # metadata is ObjectMeta, checked by the API server, not by the CRD
            out["properties"]["metadata"] = {"type": "object"}
        return out
    if isinstance(schema, list):
        return [_strict(v, top=False) for v in schema]
    return schema


@functools.cache
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            out[(f"{GROUP}/{version['name']}", kind)] = _strict(schema)
    return out


def is_custom(obj: dict[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith(GROUP + "/")


def custom_resource_errors(obj: dict[str, Any]) -> list[str]:
    schema = _schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        return [f"no CRD schema for {obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
