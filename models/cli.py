"""``driftline ctr ...``: talk to a running worker's CTR service (roll back, list versions), and
``driftline ctr synth``: a synthetic Criteo-layout impression stream to a file or a topic."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from streams.client import add_worker_options, ask_worker

if TYPE_CHECKING:
    from streams.schemas import Impression


def register(subparsers: Any) -> None:
    """Add the ``ctr`` command group to the ``driftline`` parser."""
    ctr = subparsers.add_parser("ctr", help="CTR: roll back or list a worker's versions; synthetic streams")
    commands = ctr.add_subparsers(dest="ctr_command", required=True)
    rollback = commands.add_parser("rollback", help="serve the previous model version again")
    rollback.set_defaults(func=cmd_rollback)
    versions = commands.add_parser("versions", help="list the kept model versions and which one serves")
    versions.set_defaults(func=cmd_versions)
    for command in (rollback, versions):
        add_worker_options(command, "rollback needs an admin token")
    add_synth_parser(commands)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_synth_parser(commands: Any) -> None:
    """``driftline ctr synth``: options mirror :class:`models.ctr.synth.SynthConfig`."""
    synth = commands.add_parser(
        "synth",
        help="synthetic Criteo-layout impressions (26 categorical, 13 dense fields, teacher clicks)",
        description="Writes impression/1 JSON lines (or produces them to a topic): Criteo's field "
        "cardinalities, Zipf-like ids with new ids over time, clicks from a hidden factorisation "
        "machine (about 25.6%% positives). Synthetic: see docs/ctr.md.",
    )
    synth.add_argument("--rows", type=_count, required=True, help="rows to make")
    synth.add_argument("--seed", type=_count, default=0, help="stream seed (default 0)")
    synth.add_argument("--start", type=_count, default=0, help="first row, e.g. for later held-out rows")
    synth.add_argument("--drift", type=float, default=0.0, help="teacher rotation, radians per million rows")
    synth.add_argument(
        "--id-lifetime",
        type=_count,
        default=10_000_000,
        help="mean rows before a new id takes over an id's popularity slot (0 = no new ids)",
    )
    target = synth.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="JSON-lines file to write ('-' = standard output)")
    target.add_argument("--topic", help="produce to this topic instead (impressions)")
    synth.add_argument("--rate", type=float, default=0.0, help="events/s to Kafka (0 = as fast as possible)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=cmd_synth)


def cmd_rollback(args: argparse.Namespace) -> int:
    body = ask_worker("POST", "/ctr/rollback", args)
    if body is None:
        return 1
    print(
        f"CTR model rolled back: now serving version {body['model_version']} (was {body['rolled_back_from']})"
    )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    body = ask_worker("GET", "/ctr/versions", args)
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


def cmd_synth(args: argparse.Namespace) -> int:
    from models.ctr import synth_jsonl
    from models.ctr.synth import CriteoSynth, SynthConfig

    try:
        config = SynthConfig(seed=args.seed, drift=args.drift, id_lifetime=args.id_lifetime)
    except ValueError as exc:
        print(f"driftline ctr synth: {exc}", file=sys.stderr)
        return 2
    synth = CriteoSynth(config)
    stop = args.start + args.rows
    if args.topic:
        return _produce_synth(args, synth_jsonl.impressions(synth, args.start, stop))
    started = time.monotonic()
    if args.out == "-":
        written = synth_jsonl.write(sys.stdout.buffer, synth, args.start, stop, progress=not args.quiet)
    else:
        try:
            with open(args.out, "wb") as handle:
                written = synth_jsonl.write(handle, synth, args.start, stop, progress=not args.quiet)
        except OSError as exc:
            print(f"cannot write {args.out}: {exc}", file=sys.stderr)
            return 1
    seconds = max(time.monotonic() - started, 1e-9)
    print(
        f"wrote {written:,} impressions to {args.out} in {seconds:.2f}s ({written / seconds:,.0f} rows/s)",
        file=sys.stderr if args.out == "-" else sys.stdout,
    )
    return 0


def _produce_synth(args: argparse.Namespace, records: Iterator[Impression]) -> int:
    """Send the records to ``args.topic`` with ``driftline replay``'s producer and progress bar."""
    from streams.cli import settings_from
    from streams.producer import make_producer, send_all
    from streams.schemas import Impression
    from streams.topics import spec_for

    if spec_for(args.topic).record_type is not Impression:
        print(f"topic {args.topic!r} does not carry impressions; use --topic impressions", file=sys.stderr)
        return 2
    producer = make_producer(settings_from(args).bootstrap)
    try:
        report = send_all(
            producer, args.topic, records, rate=args.rate, total=args.rows, progress=not args.quiet
        )
    finally:
        producer.close()
    print(f"produced {report.sent:,} impressions in {report.seconds:.2f}s ({report.rate:,.0f} events/s)")
    return 0
