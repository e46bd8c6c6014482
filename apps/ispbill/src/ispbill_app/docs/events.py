"""Generates docs/events.md, the event catalogue, from the registered event models."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from ispbill_core.events import registered_event_types

#: Every module that defines events: the published contracts and each service's own.
EVENT_MODULES = [
    "ispbill_core.contracts.usage_collector",
    "ispbill_core.contracts.accounts",
    "ispbill_core.contracts.rating",
    "ispbill_core.contracts.invoicing",
    "ispbill_core.contracts.payments",
    "accounts.domain.events",
    "rating.domain.events",
    "notifier.domain.events",
]


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_type_of(schema.get('items', {}))}]"
    fmt = schema.get("format")
    return f"{schema.get('type', 'any')}" + (f" ({fmt})" if fmt else "")


def render() -> str:
    for module in EVENT_MODULES:
        importlib.import_module(module)
    out = [
        "# Event catalogue",
        "",
        "Generated from the event models by `make events-doc`; do not edit by hand.",
        "`make lint` fails when this file is out of date.",
        "",
        "Published events live in `ispbill_core.contracts` (one module per producing service)"
        " and are the contract between services. Private events live in a service's"
        " `domain/events.py`.",
        "",
    ]
    for (name, version), cls in sorted(registered_event_types().items()):
        module = cls.__module__
        scope = "published" if module.startswith("ispbill_core.contracts") else "private"
        out += [f"## {name} (v{version})", "", f"`{module}.{cls.__name__}` — {scope}.", ""]
        doc = (cls.__doc__ or "").strip()
        if doc:
            out += [" ".join(line.strip() for line in doc.splitlines() if line.strip()), ""]
        schema = cls.model_json_schema()
        required = set(schema.get("required", []))
        out += ["| field | type | required |", "|---|---|---|"]
        for field, prop in schema.get("properties", {}).items():
            out.append(f"| `{field}` | {_type_of(prop)} | {'yes' if field in required else 'no'} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", metavar="FILE", help="fail if FILE differs from the output")
    args = parser.parse_args()
    text = render()
    if args.check:
        with open(args.check, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{args.check} is out of date: run `make events-doc`", file=sys.stderr)
                return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
