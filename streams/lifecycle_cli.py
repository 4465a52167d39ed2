"""``driftline models list|promote|rollback SERVICE [VERSION]``: a worker's model lineage from the shell.

``list`` prints ``GET /models`` (one service, or all without SERVICE) as a version timeline;
``promote`` and ``rollback`` call ``POST /models/SERVICE/promote|rollback`` with an admin token
(``--token`` or ``$DRIFTLINE_TOKEN``), naming VERSION or leaving the choice to the service.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from streams.client import add_worker_options, ask_worker

SERVE_COMMANDS = (
    ("promote", "serve VERSION (default: the newest kept version)"),
    ("rollback", "serve VERSION again (default: the one before the serving version)"),
)


def register(subparsers: Any) -> None:
    """Add the ``models`` command group to the ``driftline`` parser."""
    models = subparsers.add_parser("models", help="model lineage: list versions, promote, roll back")
    commands = models.add_subparsers(dest="models_command", required=True)
    listing = commands.add_parser("list", help="versions, validation and history of each service")
    listing.add_argument("service", nargs="?", help="only this service (default: all)")
    listing.set_defaults(func=cmd_list)
    for word, text in SERVE_COMMANDS:
        command = commands.add_parser(word, help=text)
        command.add_argument("service", help="service name, e.g. ctr")
        command.add_argument("version", nargs="?", type=_version, help="version number")
        command.set_defaults(func=cmd_serve, word=word)
    for command in (listing, *(commands.choices[w] for w in ("promote", "rollback"))):
        add_worker_options(command, "promote and rollback need admin")


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a version number >= 1, got {text!r}")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    body = ask_worker("GET", "/models", args)
    if body is None:
        return 1
    if args.service is not None and args.service not in body:
        print(
            f"no service {args.service!r} at {args.url} (services: {', '.join(sorted(body))})",
            file=sys.stderr,
        )
        return 1
    for name, lineage in sorted(body.items()):
        if args.service in (None, name):
            print(format_lineage(name, lineage))
    return 0


def format_lineage(name: str, lineage: dict[str, Any]) -> str:
    """One service's versions, newest last, each with its history (``*`` marks the serving one)."""
    lines = [f"{name}: serving version {lineage['serving']}"]
    for version in lineage["versions"]:
        marker = "*" if version["version"] == lineage["serving"] else " "
        lines.append(f"{marker} v{version['version']:<6} trained {_when(version['trained_at'])}")
        for event in version["history"]:
            lines.append(f"      {_when(event['at'])}  {event['action']:<11}  {event['reason']}")
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_serve(args: argparse.Namespace) -> int:
    body: dict[str, Any] | None = None if args.version is None else {"version": args.version}
    answer = ask_worker("POST", f"/models/{args.service}/{args.word}", args, body)
    if answer is None:
        return 1
    print(f"{args.service}: now serving version {answer['serving']} (was {answer['was']})")
    return 0
