"""``driftline ctr ...``: talk to a running worker's CTR service (roll back, list versions)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

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


def call(method: str, url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """Status and JSON answer of one request; raises OSError when the worker cannot be reached."""
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except json.JSONDecodeError:
            return error.code, {"error": body.decode(errors="replace")}


def _run(method: str, path: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The worker's JSON answer, or None after printing why there is none."""
    url = args.url.rstrip("/") + path
    try:
        status, body = call(method, url, args.timeout)
    except OSError as exc:
        print(f"cannot reach the worker at {url}: {exc}", file=sys.stderr)
        return None
    if status != 200:
        print(f"{method} {url} answered {status}: {body.get('error', body)}", file=sys.stderr)
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
