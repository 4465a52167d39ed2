"""``driftline ctr ...``: talk to a running worker's CTR service (roll back, list versions)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streams.client import call

DEFAULT_URL = "http://127.0.0.1:8080"


def register(subparsers: Any) -> None:
    """Add the ``ctr`` command group to the ``driftline`` parser."""
    ctr = subparsers.add_parser("ctr", help="CTR service of a running worker: rollback, versions")
    commands = ctr.add_subparsers(dest="ctr_command", required=True)
    rollback = commands.add_parser("rollback", help="serve the previous model version again")
    rollback.set_defaults(func=cmd_rollback)
    versions = commands.add_parser("versions", help="list the kept model versions and which one serves")
    versions.set_defaults(func=cmd_versions)
    for command in (rollback, versions):
        command.add_argument(
            "--url", default=DEFAULT_URL, help=f"worker HTTP address (default {DEFAULT_URL})"
        )
        command.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the worker")


def _run(method: str, path: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The worker's JSON answer, or None after printing why there is none."""
    url = args.url.rstrip("/") + path
    try:
        status, body = call(method, url, timeout=args.timeout)
    except OSError as exc:
        print(f"cannot reach the worker at {url}: {exc}", file=sys.stderr)
        return None
    if status != 200:
        reason = body.get("error", body) if isinstance(body, dict) else body
        print(f"{method} {url} answered {status}: {reason}", file=sys.stderr)
        return None
    return body


def cmd_rollback(args: argparse.Namespace) -> int:
    body = _run("POST", "/ctr/rollback", args)
    if body is None:
        return 1
    print(
        f"CTR model rolled back: now serving version {body['model_version']} (was {body['rolled_back_from']})"
    )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    body = _run("GET", "/ctr/versions", args)
    if body is None:
        return 1
    print(
        f"model {body['model']}: serving version {body['serving']}, swap every {body['swap_interval_s']:g}s"
    )
    for version in body["versions"]:
        marker = "*" if version["version"] == body["serving"] else " "
        auc = version["metrics"].get("auc")
        auc_text = f"{auc:.4f}" if auc is not None else "-"
        print(
            f"{marker} v{version['version']:<5} samples {version['samples_seen']:>10,}  "
            f"steps {version['steps']:>7,}  last batch AUC {auc_text}"
        )
    return 0
