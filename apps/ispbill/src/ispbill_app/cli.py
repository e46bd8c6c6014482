"""`ispbill`: run the all-in-one or one distributed component, and operate a running server."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ispbill_app.client import ApiClient, ApiError

COMPONENTS = ("collector", "rating", "api", "invoicing", "notifier")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="where the SQLite ledger and outbox live")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST API and dashboard (default 8080)")
    p.add_argument("--radius-acct-port", type=int, help="RADIUS accounting, UDP (default 1813)")
    p.add_argument("--grpc-port", type=int, help="gRPC invoices service (default 50051)")
    p.add_argument(
        "--ledger", help="'sqlite' (default), a postgresql:// DSN, or an esdb:// / kurrentdb:// URI"
    )
    p.add_argument("--kafka", help="Kafka bootstrap servers, host:port (distributed mode)")
    p.add_argument("--smtp-host", help="SMTP relay; without it e-mails go to DATA_DIR/outbox")
    p.add_argument("--smtp-port", type=int)
    p.add_argument("--timezone", help="IANA zone billing periods are cut in (default UTC)")


def _settings_from(args: argparse.Namespace) -> Any:
    from zoneinfo import ZoneInfo

    from ispbill_app.settings import Settings

    overrides: dict[str, Any] = {}
    for flag, name in [
        ("data_dir", "data_dir"),
        ("host", "host"),
        ("http_port", "http_port"),
        ("radius_acct_port", "radius_acct_port"),
        ("grpc_port", "grpc_port"),
        ("ledger", "ledger"),
        ("kafka", "kafka"),
        ("smtp_host", "smtp_host"),
        ("smtp_port", "smtp_port"),
    ]:
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "timezone", None):
        overrides["timezone"] = ZoneInfo(args.timezone)
    return Settings(**overrides)


def _print(data: Any, fmt: str, columns: list[tuple[str, str]] | None = None) -> None:
    if fmt == "json" or columns is None:
        print(json.dumps(data, indent=2, sort_keys=False))
        return
    rows = data if isinstance(data, list) else [data]
    table = [[str(_dig(r, key)) for _, key in columns] for r in rows]
    headers = [h for h, _ in columns]
    widths = [
        max(len(h), *(len(row[i]) for row in table)) if table else len(h)
        for i, h in enumerate(headers)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _dig(row: dict[str, Any], key: str) -> Any:
    value: Any = row
    for part in key.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value


INVOICE_COLUMNS = [
    ("NUMBER", "number"),
    ("CUSTOMER", "customer_id"),
    ("PERIOD", "period"),
    ("TOTAL", "total.amount"),
    ("CUR", "currency"),
    ("DUE", "due_on"),
    ("STATUS", "status"),
]


def _show_invoice(invoice: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        _print(invoice, fmt)
        return
    print(f"Invoice {invoice['number']}  ({invoice['status']})")
    print(
        f"  customer  {invoice['customer_id']}  {invoice['customer_name']}"
        f" <{invoice['customer_email']}>"
    )
    print(
        f"  period    {invoice['period']}   issued {invoice['issued_at']}   due {invoice['due_on']}"
    )
    for line in invoice["lines"]:
        print(
            f"  {line['description'][:60]:<60} {line['quantity']:>10} {line['unit']:<6}"
            f" {line['amount']['amount']:>12}"
        )
    print(f"  {'subtotal':<78} {invoice['subtotal']['amount']:>12}")
    for tax in invoice["taxes"]:
        label = f"{tax['tax_name']} {float(tax['rate']) * 100:g}% on {tax['taxable']['amount']}"
        print(f"  {label:<78} {tax['amount']['amount']:>12}")
    print(f"  {'TOTAL ' + invoice['currency']:<78} {invoice['total']['amount']:>12}")


def _secrets(args: argparse.Namespace) -> int:
    from ispbill_core.sealing import SealingError, new_key

    if args.secrets_command == "new-key":
        print(new_key())
        return 0
    try:
        keyring = _settings_from(args).keyring(create=False)
    except SealingError as exc:
        print(f"ispbill: {exc}", file=sys.stderr)
        return 2
    print(f"seals with key {keyring.sealing_key_id}; opens {', '.join(keyring.key_ids)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ispbill", description=__doc__)
    parser.add_argument(
        "--server",
        default=None,
        help="REST API of a running ispbill (env ISPBILL_SERVER; default http://127.0.0.1:8080)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="all services in one process, SQLite ledger, no broker")
    _add_runtime_flags(run)
    run.add_argument("--with-demo", action="store_true", help="load the demo ISP once started")

    serve = sub.add_parser("serve", help="one component of the distributed runtime")
    serve.add_argument("component", choices=COMPONENTS)
    _add_runtime_flags(serve)

    sub.add_parser("demo", help="load the demo ISP into the running server")

    secrets_cmd = sub.add_parser("secrets", help="the key that seals NAS secrets in the ledger")
    secrets_sub = secrets_cmd.add_subparsers(dest="secrets_command", required=True)
    secrets_sub.add_parser("new-key", help="print a new random key (for ISPBILL_SECRETS_KEY)")
    secrets_check = secrets_sub.add_parser(
        "check", help="load the keyring as a server would and print its key ids"
    )
    _add_runtime_flags(secrets_check)

    nas = sub.add_parser("nas", help="the NASes allowed to send accounting")
    nas_sub = nas.add_subparsers(dest="action", required=True)
    nas_list = nas_sub.add_parser("list", help="every NAS in service (never a secret)")
    nas_list.add_argument("--format", choices=("json", "table"), default="table")
    for name, what in [
        ("register", "register a NAS"),
        ("change", "new details for a NAS; what is not given stays as it is, but the secret"),
    ]:
        p = nas_sub.add_parser(name, help=what)
        p.add_argument("nas_id")
        p.add_argument("--name", required=name == "register")
        p.add_argument("--address", required=name == "register", help="its source IP address")
        p.add_argument("--vendor", help="mikrotik, cisco, juniper, ... (default generic)")
        p.add_argument(
            "--require-message-authenticator",
            action=argparse.BooleanOptionalAction,
            help="drop its requests without a valid Message-Authenticator (BlastRADIUS); off"
            " by default when registering",
        )
        p.add_argument(
            "--secret-file",
            type=Path,
            help="read the RADIUS shared secret from this file (first line) rather than from a"
            " prompt or standard input; never give a secret on the command line",
        )
        p.add_argument("--format", choices=("json", "table"), default="table")
    nas_remove = nas_sub.add_parser("remove", help="take a NAS out of service")
    nas_remove.add_argument("nas_id")
    nas_remove.add_argument("--reason", default="")
    nas_remove.add_argument("--format", choices=("json", "table"), default="table")

    usage = sub.add_parser("usage", help="usage as rating sees it")
    usage_sub = usage.add_subparsers(dest="action", required=True)
    usage_unmatched = usage_sub.add_parser(
        "unmatched", help="usage of RADIUS usernames that no subscription has, largest first"
    )
    usage_unmatched.add_argument("--format", choices=("json", "table"), default="table")

    collector = sub.add_parser("collector", help="the RADIUS accounting collector")
    collector_sub = collector.add_subparsers(dest="action", required=True)
    drops = collector_sub.add_parser(
        "drops", help="dropped accounting per source address: unregistered routers, bad secrets"
    )
    drops.add_argument("--format", choices=("json", "table"), default="table")

    bill = sub.add_parser("bill-run", help="issue the invoices of a billing period")
    bill.add_argument("--period", required=True, help="YYYY-MM")
    bill.add_argument("--format", choices=("json", "table"), default="table")

    inv = sub.add_parser("invoices", help="list, show or download invoices")
    inv_sub = inv.add_subparsers(dest="action", required=True)
    inv_list = inv_sub.add_parser("list")
    inv_list.add_argument("--customer")
    inv_list.add_argument("--period")
    inv_list.add_argument("--format", choices=("json", "table"), default="table")
    inv_show = inv_sub.add_parser("show")
    inv_show.add_argument("invoice", help="invoice number or id")
    inv_show.add_argument("--format", choices=("json", "table"), default="table")
    inv_pdf = inv_sub.add_parser("pdf")
    inv_pdf.add_argument("invoice")
    inv_pdf.add_argument("-o", "--output", type=Path, required=True)

    pay = sub.add_parser("payments", help="record payments")
    pay_sub = pay.add_subparsers(dest="action", required=True)
    pay_rec = pay_sub.add_parser("record", help="a manual payment against an invoice")
    pay_rec.add_argument("--invoice", required=True)
    pay_rec.add_argument("--amount", required=True)
    pay_rec.add_argument("--reference", required=True)
    pay_rec.add_argument("--method", default="cash")
    pay_rec.add_argument("--format", choices=("json", "table"), default="table")

    imp = sub.add_parser("import", help="import another system's history")
    imp_sub = imp.add_subparsers(dest="action", required=True)
    imp_detail = imp_sub.add_parser(
        "radius-detail",
        help="FreeRADIUS detail files (plain or gzip; a directory: every detail* file under it)",
    )
    imp_detail.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp_detail.add_argument(
        "--nas", help="attribute every record to this NAS (id or address), whatever it says"
    )
    imp_detail.add_argument(
        "--timezone",
        help="IANA zone the FreeRADIUS server ran in; needed when its dates are not UTC",
    )
    imp_detail.add_argument("--dry-run", action="store_true", help="screen only, record nothing")
    imp_detail.add_argument(
        "--batch-size", type=int, default=1000, help="records per request (default 1000)"
    )
    imp_detail.add_argument("--format", choices=("json", "table"), default="table")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)

    if args.command == "secrets":
        return _secrets(args)

    if args.command in ("run", "serve"):
        from ispbill_app import bootstrap
        from ispbill_core.sealing import SealingError
        from ispbill_core.telemetry import TelemetryError

        settings = _settings_from(args)
        try:
            if args.command == "run":
                asyncio.run(bootstrap.run_embedded(settings, with_demo=args.with_demo))
            else:
                asyncio.run(bootstrap.run_component(args.component, settings))
        except KeyboardInterrupt:
            pass
        except (SealingError, TelemetryError) as exc:
            print(f"ispbill: {exc}", file=sys.stderr)
            return 2
        return 0

    client = ApiClient(args.server)
    try:
        return _operate(client, args)
    except ApiError as exc:
        print(f"ispbill: {exc.detail} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ispbill: cannot reach {client.server}: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _operate(client: ApiClient, args: argparse.Namespace) -> int:
    import httpx

    try:
        if args.command == "demo":
            from ispbill_app.demo import load_demo

            print(json.dumps({"present": load_demo(client)}))
        elif args.command == "bill-run":
            report = client.post("/api/v1/bill-runs", {"period": args.period})
            if args.format == "json":
                _print(report, "json")
            else:
                print(
                    f"period {report['period']}: issued {len(report['issued'])}, "
                    f"already issued {len(report['already_issued'])}, "
                    f"skipped {len(report['skipped'])}"
                )
                for number in report["issued"]:
                    print(f"  issued {number}")
                for customer, why in report["skipped"].items():
                    print(f"  skipped {customer}: {why}")
        elif args.command == "invoices":
            if args.action == "list":
                found = client.get(
                    "/api/v1/invoices", customer_id=args.customer, period=args.period
                )
                _print(found, args.format, INVOICE_COLUMNS)
            elif args.action == "show":
                _show_invoice(client.get(f"/api/v1/invoices/{args.invoice}"), args.format)
            else:
                args.output.write_bytes(client.get_bytes(f"/api/v1/invoices/{args.invoice}/pdf"))
                print(f"wrote {args.output}")
        elif args.command == "import":
            return _import_radius_detail(client, args)
        elif args.command == "nas":
            _nas(client, args)
        elif args.command == "usage":
            _print(client.get("/api/v1/usage/unmatched"), args.format, UNMATCHED_COLUMNS)
        elif args.command == "collector":
            _collector_drops(client, args.format)
        elif args.command == "payments":
            body = {
                "invoice": args.invoice,
                "amount": args.amount,
                "reference": args.reference,
                "method": args.method,
            }
            payment = client.post("/api/v1/payments/manual", body)
            _print(
                payment,
                args.format,
                [
                    ("PAYMENT", "payment_id"),
                    ("INVOICE", "invoice_id"),
                    ("AMOUNT", "amount.amount"),
                    ("CUR", "amount.currency"),
                    ("REFERENCE", "transaction_ref"),
                ],
            )
    except httpx.TransportError as exc:
        raise OSError(str(exc)) from exc
    return 0


NAS_COLUMNS = [
    ("NAS", "nas_id"),
    ("NAME", "name"),
    ("ADDRESS", "ip_address"),
    ("VENDOR", "vendor"),
    ("MSG-AUTH", "require_message_authenticator"),
    ("SECRET", "secret_storage"),
    ("KEY", "secret_key_id"),
]


UNMATCHED_COLUMNS = [
    ("USERNAME", "username"),
    ("RECORDS", "records"),
    ("OCTETS", "total_octets"),
    ("FIRST", "first_seen"),
    ("LAST", "last_seen"),
    ("NAS", "nas_ids"),
    ("BEFORE-SUBSCRIPTION", "subscription_id"),
]


def _collector_drops(client: ApiClient, fmt: str) -> None:
    found = client.get("/api/v1/collector/drops")
    if fmt == "json":
        _print(found, fmt)
        return
    rows = [
        {
            "source": source,
            "nas_id": entry["nas_id"] or "(not registered)",
            "reasons": ", ".join(
                f"{r.removeprefix('dropped_')} {n}" for r, n in entry["reasons"].items()
            ),
            "last_seen": entry["last_seen"],
        }
        for source, entry in found.items()
    ]
    _print(
        rows,
        fmt,
        [("SOURCE", "source"), ("NAS", "nas_id"), ("DROPPED", "reasons"), ("LAST", "last_seen")],
    )


def _nas(client: ApiClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        _print(client.get("/api/v1/nas"), args.format, NAS_COLUMNS)
        return
    if args.action == "remove":
        removed = client.delete(f"/api/v1/nas/{args.nas_id}", reason=args.reason or None)
        _print(removed, args.format, [("REMOVED", "nas_id"), ("REASON", "reason")])
        return
    given = {
        "name": args.name,
        "ip_address": args.address,
        "vendor": args.vendor,
        "require_message_authenticator": args.require_message_authenticator,
    }
    if args.action == "register":
        defaults: dict[str, Any] = {"vendor": "generic", "require_message_authenticator": False}
    else:  # a change keeps what is not given; the secret is never read back, so it is asked
        found = [n for n in client.get("/api/v1/nas") if n["nas_id"] == args.nas_id]
        if not found:
            raise ApiError(404, f"NAS {args.nas_id!r} is not registered")
        defaults = found[0]
    body = {key: defaults.get(key) if value is None else value for key, value in given.items()}
    body["secret"] = _read_secret(args.secret_file)
    if args.action == "change":
        # A prompt can take minutes: a change someone else made meanwhile is refused (409),
        # not undone with the details read before it.
        body["expected_version"] = defaults["version"]
    if args.action == "register":
        shown = client.post("/api/v1/nas", {"nas_id": args.nas_id, **body})
    else:
        shown = client.put(f"/api/v1/nas/{args.nas_id}", body)
    _print(shown, args.format, NAS_COLUMNS)


def _read_secret(path: Path | None) -> str:
    """From a file, a prompt (a terminal), or the first line of standard input; never argv,
    which other users of the machine can read in the process list."""
    if path is not None:
        text = path.read_text(encoding="utf-8")
    elif sys.stdin.isatty():
        import getpass

        text = getpass.getpass("RADIUS shared secret: ")
    else:
        text = sys.stdin.readline()
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise SystemExit("ispbill: no RADIUS shared secret given")
    return secret


IMPORT_PATH = "/api/v1/collector/imports/radius-detail"
#: Per reason, how many skipped records are named on stderr (all of them with --verbose).
SHOWN_PER_REASON = 20


def _detail_files(paths: list[Path]) -> list[Path]:
    """The files named, and under each directory every detail* file (FreeRADIUS's radacct
    layout: <client address>/detail-YYYYMMDD), in name order, so rotated files go oldest first.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("detail*") if p.is_file())
        else:
            found.append(path)
    return found


class _ImportTotals:
    def __init__(self, args: argparse.Namespace) -> None:
        self.verbose = args.verbose
        self.summary: dict[str, Any] = {
            "files": 0,
            "records": 0,
            "malformed": 0,
            "imported": 0,
            "repeated": 0,
            "skipped": {},
            "unknown_nas": {},
            "dry_run": args.dry_run,
        }
        self._shown: dict[str, int] = {}

    def skipped(self, reason: str, where: str, why: str) -> None:
        shown = self._shown.get(reason, 0)
        self._shown[reason] = shown + 1
        if self.verbose or shown < SHOWN_PER_REASON:
            print(f"{where}: skipped ({reason}): {why}", file=sys.stderr)
        elif shown == SHOWN_PER_REASON:
            print(f"(more {reason} not shown; --verbose shows them all)", file=sys.stderr)

    def add(self, result: dict[str, Any]) -> None:
        s = self.summary
        s["imported"] += result["imported"]
        s["repeated"] += result["repeated"]
        for reason, count in result["skipped"].items():
            s["skipped"][reason] = s["skipped"].get(reason, 0) + count
        for address, count in result["unknown_nas"].items():
            s["unknown_nas"][address] = s["unknown_nas"].get(address, 0) + count
        for record in result["skipped_records"]:
            self.skipped(record["reason"], record["ref"], record["detail"])


def _import_radius_detail(client: ApiClient, args: argparse.Namespace) -> int:
    """Read the files here, send the records in batches; the server screens and records them.

    Every batch is one idempotent publish, so an import that stops half-way (Ctrl-C, a lost
    connection, a bus that was down) is finished by running the same command again.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from usage_collector.adapters.detail_file import (
        LocalTimeWithoutZone,
        MalformedDetailRecord,
        read_detail_file,
    )
    from usage_collector.entrypoints.http import encode_imported_request

    if args.batch_size < 1:
        print("ispbill: --batch-size must be at least 1", file=sys.stderr)
        return 1
    try:
        zone = ZoneInfo(args.timezone) if args.timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        print(f"ispbill: unknown time zone {args.timezone!r}", file=sys.stderr)
        return 1
    totals = _ImportTotals(args)
    verb = "would import" if args.dry_run else "imported"

    def send(batch: list[dict[str, Any]]) -> None:
        body = {"records": batch, "nas": args.nas, "dry_run": args.dry_run}
        totals.add(client.post(IMPORT_PATH, body))
        batch.clear()

    for path in _detail_files(args.files):
        totals.summary["files"] += 1
        batch: list[dict[str, Any]] = []
        read = 0
        try:
            for item in read_detail_file(path, timezone=zone):
                read += 1
                if isinstance(item, MalformedDetailRecord):
                    totals.summary["malformed"] += 1
                    totals.skipped("malformed", item.ref, item.reason)
                    continue
                batch.append(
                    encode_imported_request(
                        item.ref, item.attributes, item.nas_addresses, item.received_at
                    )
                )
                if len(batch) >= args.batch_size:
                    send(batch)
                    print(f"{path}: {read} records read so far", file=sys.stderr)
            if batch:
                send(batch)
        except LocalTimeWithoutZone as exc:
            print(f"ispbill: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"ispbill: cannot read {path}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(
                f"ispbill: interrupted in {path}; the same command finishes the import"
                " (what is already recorded is not counted again)",
                file=sys.stderr,
            )
            return 130
        totals.summary["records"] += read
        print(f"{path}: {_count(read, 'record')} read", file=sys.stderr)

    summary = totals.summary
    if args.format == "json":
        _print(summary, "json")
        return 0
    skipped = sum(summary["skipped"].values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["skipped"].items()))
    print(
        f"{_count(summary['records'], 'record')} in {_count(summary['files'], 'file')}: "
        f"{verb} {summary['imported']}, repeated {summary['repeated']}, "
        f"malformed {summary['malformed']}, skipped {skipped}"
        + (f" ({reasons})" if reasons else "")
    )
    for address, count in sorted(summary["unknown_nas"].items()):
        print(
            f"  no NAS registered at {address}: {_count(count, 'record')}"
            " (register the NAS, or name it with --nas)"
        )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
