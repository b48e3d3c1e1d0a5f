"""Sandbox and template records as JSON, for stores that keep them as text."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sandbox.domain.model import Language, Limits, Sandbox, SandboxKind, SandboxState, Template
from sandbox.domain.reasons import ReasonCode


def dump(sandbox: Sandbox) -> str:
    return json.dumps(dataclasses.asdict(sandbox), sort_keys=True)


def load(text: str) -> Sandbox:
    data: dict[str, Any] = json.loads(text)
    data["kind"] = SandboxKind(data["kind"])
    data["state"] = SandboxState(data["state"])
    data["language"] = Language(data["language"]) if data["language"] else None
    data["limits"] = Limits(**data["limits"])
    # Records written before reason codes existed have none.
    data["reason_code"] = ReasonCode(data["reason_code"]) if data.get("reason_code") else None
    for key in ("env", "checkpoint_identity"):
        data[key] = tuple(tuple(pair) for pair in data[key])
    data["package_dirs"] = tuple(data["package_dirs"])
    # Records written before pins were kept have none: their layers restore where they are.
    data["package_pins"] = tuple(tuple(pins) for pins in data.get("package_pins", ()))
    # Records written before egress existed have no allow-list: no way out.
    data["network_allow"] = tuple(data.get("network_allow", ()))
    known = {field.name for field in dataclasses.fields(Sandbox)}
    return Sandbox(**{key: value for key, value in data.items() if key in known})


def dump_template(template: Template) -> str:
    return json.dumps(dataclasses.asdict(template), sort_keys=True)


def load_template(text: str) -> Template:
    data: dict[str, Any] = json.loads(text)
    data["kind"] = SandboxKind(data["kind"])
    data["language"] = Language(data["language"]) if data["language"] else None
    data["limits"] = Limits(**data["limits"])
    for key in ("env", "identity"):
        data[key] = tuple(tuple(pair) for pair in data[key])
    data["package_dirs"] = tuple(data["package_dirs"])
    data["network_allow"] = tuple(data["network_allow"])
    known = {field.name for field in dataclasses.fields(Template)}
    return Template(**{key: value for key, value in data.items() if key in known})
