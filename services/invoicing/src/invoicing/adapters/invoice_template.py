"""The invoice template: the words of an invoice PDF per language, editable without code.

The default is `invoice_template.toml` beside this module; an ISP's own file (setting
ISPBILL_INVOICE_TEMPLATE) holds only what it changes and is merged over it, key by key. Every
label is checked when the template is loaded (a placeholder a label does not offer, a brace
left open, an accent that is not a colour), so a bad template stops the service at start, not
a bill run at 03:00. See the default file's comments for how to edit one.
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE = Path(__file__).with_name("invoice_template.toml")

#: The placeholders each label may use.
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "title": frozenset(),
    "number": frozenset({"number"}),
    "invoice_number": frozenset(),
    "issue_date": frozenset(),
    "due_date": frozenset(),
    "billing_period": frozenset(),
    "customer_id": frozenset(),
    "tax_id": frozenset({"tax_id"}),
    "bill_to": frozenset(),
    "description": frozenset(),
    "quantity": frozenset(),
    "unit": frozenset(),
    "unit_price": frozenset({"currency"}),
    "amount": frozenset({"currency"}),
    "price_incl_tax": frozenset({"gross"}),
    "subtotal": frozenset(),
    "tax_line": frozenset({"tax", "rate", "taxable"}),
    "tax_exempt": frozenset({"tax", "certificate"}),
    "total": frozenset(),
    "pay_note": frozenset({"total", "currency", "due_date", "number"}),
    "paid_note": frozenset(),
    "paid_stamp": frozenset(),
    "payment_instructions": frozenset({"number", "total", "currency", "due_date", "customer_id"}),
    "continued": frozenset({"number"}),
    "page": frozenset({"page", "pages"}),
    "footer": frozenset({"isp_footer"}),
}

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_COLOUR = re.compile(r"^#?([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$")
_MAX_LABEL = 2000


class TemplateError(ValueError):
    """The template cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class InvoiceTemplate:
    default_language: str
    labels: dict[str, dict[str, str]]
    accent: str = ""
    source: str = str(DEFAULT_TEMPLATE)

    @classmethod
    def load(cls, path: str | Path | None = None) -> InvoiceTemplate:
        """The default template, with the file at `path` (if any) merged over it."""
        data = _read(DEFAULT_TEMPLATE)
        source = str(DEFAULT_TEMPLATE)
        if path:
            override = _read(Path(path))
            unknown = set(override) - {"default_language", "style", "labels"}
            if unknown:
                raise TemplateError(f"{path}: unknown sections or keys {sorted(unknown)}")
            for key in ("default_language",):
                if key in override:
                    data[key] = override[key]
            data.setdefault("style", {}).update(override.get("style", {}))
            for language, labels in override.get("labels", {}).items():
                if not isinstance(labels, dict):
                    raise TemplateError(f"{path}: [labels.{language}] must be a table")
                base = data["labels"].get(language) or data["labels"]["en"]
                data["labels"][language] = {**base, **labels}
            source = str(path)
        return cls._checked(data, source)

    @classmethod
    def _checked(cls, data: dict[str, Any], source: str) -> InvoiceTemplate:
        labels = data.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise TemplateError(f"{source}: no [labels.<language>] table")
        checked: dict[str, dict[str, str]] = {}
        for language, table in labels.items():
            if not _LANGUAGE.match(language):
                raise TemplateError(f"{source}: language {language!r} is not a 2-3 letter code")
            unknown = set(table) - set(PLACEHOLDERS)
            if unknown:
                raise TemplateError(f"{source}: [labels.{language}] unknown keys {sorted(unknown)}")
            missing = set(PLACEHOLDERS) - set(table)
            if missing:
                raise TemplateError(f"{source}: [labels.{language}] lacks {sorted(missing)}")
            for key, text in table.items():
                _check_label(source, language, key, text)
            checked[language] = dict(table)
        default = data.get("default_language", "en")
        if default not in checked:
            raise TemplateError(f"{source}: default_language {default!r} has no labels")
        accent = str(data.get("style", {}).get("accent", "") or "")
        if accent and not _COLOUR.match(accent):
            raise TemplateError(f"{source}: [style] accent {accent!r} is not #RRGGBB")
        return cls(default_language=default, labels=checked, accent=accent, source=source)

    def language_for(self, wanted: str) -> str:
        """`wanted` when the template speaks it, else the default language."""
        return wanted if wanted in self.labels else self.default_language

    def text(self, language: str, key: str, **values: object) -> str:
        return self.labels[language][key].format_map(values)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise TemplateError(f"invoice template {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"invoice template {path}: {exc}") from None


def _check_label(source: str, language: str, key: str, text: object) -> None:
    where = f"{source}: [labels.{language}] {key}"
    if not isinstance(text, str):
        raise TemplateError(f"{where} must be text")
    if len(text) > _MAX_LABEL:
        raise TemplateError(f"{where} is longer than {_MAX_LABEL} characters")
    if any(ord(c) < 32 and c != "\n" for c in text):
        raise TemplateError(f"{where} holds a control character")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"{where}: {exc} (write {{{{ and }}}} for a brace)") from None
    fields = {name for _, name, _, _ in parsed if name is not None}
    if any(spec or conversion for _, name, spec, conversion in parsed if name is not None):
        raise TemplateError(
            f"{where}: a placeholder is a plain name such as {{number}}, without a format"
            " (':') or a conversion ('!'): numbers and dates come formatted"
        )
    wrong = fields - PLACEHOLDERS[key]
    if wrong:
        offered = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS[key])) or "none"
        raise TemplateError(f"{where}: no placeholder {sorted(wrong)} here (offered: {offered})")
    if any(not re.fullmatch(r"[a-z_]+", f) for f in fields):
        raise TemplateError(f"{where}: placeholders are plain names such as {{number}}")
    try:  # what rendering will do, with every placeholder it offers
        text.format_map(dict.fromkeys(PLACEHOLDERS[key], "x"))
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise TemplateError(f"{where}: {exc}") from None
