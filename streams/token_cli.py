"""``driftline tokens add|list|revoke`` and ``driftline annotators add``: who may call the HTTP API.

A new token is written to ``<home>/tokens.jsonl`` (so a worker on that home accepts it within a
second, even when no broker runs yet) and published on the ``tokens`` topic when a broker answers
(so every worker and replica of the deployment accepts it). The secret is printed once, on the last
line of stdout, and never stored: only its sha256 is.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from streams.config import Settings
from streams.kafka_security import client_security
from streams.tokens import Role, TokenFile, TokenRecord, TokenStore, new_token, revocation

#: How long the CLI waits for a broker before keeping a change in the home's file only.
BROKER_WAIT_S = 5.0


def _settings(args: argparse.Namespace) -> Settings:
    # a topic just created has no leader for a moment: kafka-python's retries are not news here
    logging.getLogger("kafka").setLevel(logging.ERROR)
    return Settings.from_env(bootstrap_servers=args.bootstrap_servers, home=args.home)


def _record(settings: Settings, record: TokenRecord) -> str:
    """Store ``record`` in the home's file and on the topic when a broker answers; say where."""
    from streams.token_sync import broker_answers, publish
    from streams.topics import topic_name

    file = TokenFile(settings.home)
    file.append(record)
    try:
        if not broker_answers(settings.bootstrap):
            raise ConnectionRefusedError(f"nothing listens at {settings.bootstrap}")
        publish(settings.bootstrap, record, timeout_s=BROKER_WAIT_S, **client_security(settings))
    except Exception as exc:  # no broker: the home's workers publish it when they start
        print(
            f"note: Kafka did not take it ({type(exc).__name__}: {exc}); kept in {file.path}: workers "
            "on this home accept it and publish it for the others once Kafka runs",
            file=sys.stderr,
        )
        return f"{file.path}"
    return f"{file.path} and on {topic_name('tokens')}"


def cmd_add(args: argparse.Namespace, role: Role | None = None) -> int:
    settings = _settings(args)
    role = role or Role.parse(args.role)
    token, record = new_token(args.name, role)
    where = _record(settings, record)
    print(f"token {record.name!r} ({role.label}) stored (hashed) in {where}; it is shown only now:")
    print(token)
    return 0


def print_run_tokens(settings: Settings) -> None:
    """The main job's tokens: a fresh admin and annotator token per run (the previous run's lapse)."""
    page = f"http://{settings.http_host}:{settings.http_port}/labeling"
    for name, role in (("run-admin", Role.ADMIN), ("run-annotator", Role.ANNOTATOR)):
        token, record = new_token(name, role)
        _record(settings, record)
        print(f"[driftline] {role.label} token ({name}): {token}", flush=True)
        if role is Role.ANNOTATOR:
            print(f"[driftline] label at {page}#token={token}", flush=True)


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    known = _known(settings)
    if known.newest(args.name) is None:
        print(f"driftline: error: no token named {args.name!r}", file=sys.stderr)
        return 2
    where = _record(settings, revocation(args.name))
    print(f"token {args.name!r} revoked in {where}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    records = _known(_settings(args)).records()
    if not records:
        print("no tokens; create one with: driftline tokens add NAME --role admin|annotator|reader")
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.ts))
        state = "revoked" if record.revoked else record.role
        print(f"{record.name:<24} {state:<10} {when} UTC")
    return 0


def _known(settings: Settings) -> TokenStore:
    """Every token record of the home's file and, when a broker answers, the topic."""
    from streams.token_sync import broker_answers, read_topic

    records = TokenFile(settings.home).read()
    try:
        if not broker_answers(settings.bootstrap):
            raise ConnectionRefusedError(f"nothing listens at {settings.bootstrap}")
        records += read_topic(settings.bootstrap, timeout_s=BROKER_WAIT_S, **client_security(settings))
    except Exception as exc:  # no broker: the file is all there is to show
        print(f"note: Kafka not read ({type(exc).__name__}: {exc}); showing {settings.home}", file=sys.stderr)
    return TokenStore(records)


def add_token_commands(sub: Any) -> None:
    """Register ``tokens`` and ``annotators`` on the ``driftline`` sub-parsers."""
    roles = [r.label for r in Role]
    tokens = sub.add_parser("tokens", help="API tokens with roles (reader < annotator < admin)")
    actions = tokens.add_subparsers(dest="action", required=True)
    p = actions.add_parser("add", help="create a token; prints it on the last line")
    p.add_argument("name", help="who holds it (labels carry this name)")
    p.add_argument("--role", choices=roles, default="reader")
    p.set_defaults(func=cmd_add)
    p = actions.add_parser("list", help="names, roles and creation times (never the secrets)")
    p.set_defaults(func=cmd_list)
    p = actions.add_parser("revoke", help="refuse a token from now on, on every worker")
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke)

    annotators = sub.add_parser("annotators", help="annotator tokens: driftline annotators add NAME")
    actions = annotators.add_subparsers(dest="action", required=True)
    p = actions.add_parser("add", help="create an annotator token; prints it on the last line")
    p.add_argument("name")
    p.set_defaults(func=lambda args: cmd_add(args, Role.ANNOTATOR))
