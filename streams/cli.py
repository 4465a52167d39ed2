"""The ``driftline`` command: broker, topics, worker, produce, replay, and the main job."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.token_cli import add_token_commands

#: Command groups that packages add with ``register(subparsers)``: name -> (module, help). A
#: module is imported only when its group is the command being run, so that plain commands
#: (produce, replay, ...) start without loading torch.
PLUGIN_CLIS: dict[str, tuple[str, str]] = {
    "forecasters": ("forecasters.cli", "online forecasters: pretraining for a warm start"),
    "ctr": ("models.cli", "CTR models: serving versions, rollback, synthetic Criteo-layout streams"),
    "dead-letters": ("streams.dead_letters", "dead letters: send them back to their topics once fixed"),
    "labels": ("rankers.label_export", "labels: export every accepted label as JSON lines"),
    "models": ("streams.lifecycle_cli", "model lifecycle: list versions, promote, roll back"),
}


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        bootstrap_servers=args.bootstrap_servers,
        home=args.home,
        kafka_port=getattr(args, "port", None),
        http_port=getattr(args, "http_port", None),
        services=getattr(args, "services", None),
    )


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    settings = settings_from(args)
    broker = EmbeddedBroker(
        Path(settings.home) / "kafka", settings.cache, settings.kafka_port, settings.controller_port
    )
    broker.start(out=sys.stderr)
    print(
        f"Kafka {broker.jars.version} ready on {broker.bootstrap} (data in {broker.log_dir}); Ctrl-C stops",
        flush=True,
    )
    try:
        wait_for_signal()
    finally:
        broker.stop()
        print("Kafka stopped", flush=True)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.topics import TOPICS, ensure_topics, topic_name

    settings = settings_from(args)
    created = ensure_topics(settings.bootstrap, partitions=args.partitions)
    for short in TOPICS:
        name = topic_name(short)
        print(f"{name}{'  (created)' if name in created else ''}")
    return 0


def parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["ctr.k=5"]`` -> ``{"ctr": {"k": 5}}``; values parse as JSON where they can."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        service, dot, key = name.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--option expects SERVICE.KEY=VALUE, got {pair!r}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(service, {})[key] = parsed
    return options


def install_http_security(settings: Settings) -> None:
    """Roles started here accept the deployment's tokens: the home's file and the tokens topic."""
    from streams.auth import HttpSecurity, install

    install(HttpSecurity.from_settings(settings, follow_topic=True))


def cmd_worker(args: argparse.Namespace) -> int:
    from roles.worker import WorkerRole, run_until_signalled
    from streams import registry
    from streams.topics import ensure_topics

    settings = settings_from(args)
    install_http_security(settings)
    logging.getLogger().setLevel(args.loglevel.upper())
    names = registry.parse_names(settings.services)
    options = parse_options(args.option)
    ensure_topics(settings.bootstrap)
    services = [registry.build(n, Path(settings.home) / n, **options.get(n, {})) for n in names]
    run_until_signalled(WorkerRole(settings, services))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from roles.serving import ServingRole
    from roles.worker import run_until_signalled
    from streams import registry
    from streams.topics import ensure_topics

    settings = settings_from(args)
    install_http_security(settings)
    logging.getLogger().setLevel(args.loglevel.upper())
    options = parse_options(args.option)
    ensure_topics(settings.bootstrap)
    names = [n.strip() for n in (args.services or "ctr").split(",") if n.strip()]
    parts = [registry.build_serving(n, settings.checkpoint_root, **options.get(n, {})) for n in names]
    run_until_signalled(ServingRole(settings, parts), uvloop.run)  # the request path: half the CPU
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.producer import encode, make_producer
    from streams.schemas import RecordError
    from streams.topics import topic_name

    settings = settings_from(args)
    topic = topic_name(args.topic)
    lines = args.records or [line for line in sys.stdin if line.strip()]
    producer = make_producer(settings.bootstrap)
    sent = 0
    try:
        for number, line in enumerate(lines, 1):
            try:
                value = encode(args.topic, line, validate=not args.no_validate)
            except RecordError as exc:
                print(f"record {number} not sent: {exc}", file=sys.stderr)
                return 2
            producer.send(topic, value=value, key=args.key.encode() if args.key else None)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    print(f"sent {sent} record(s) to {topic}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.producer import (
        count_lines,
        make_producer,
        observations_from_csv,
        records_from_jsonl,
        send_all,
    )

    settings = settings_from(args)
    path = Path(args.file)
    if not path.exists():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    is_csv = any(s in (".csv", ".txt") for s in path.suffixes)
    if is_csv and args.topic != "observations":
        print(
            "CSV files replay onto the observations topic; use JSON lines for other topics", file=sys.stderr
        )
        return 2
    if is_csv:
        records = observations_from_csv(
            path, args.series or path.name.split(".")[0], header=not args.no_header, step_s=args.step_s
        )
    else:
        records = records_from_jsonl(path, args.topic)
    total = count_lines(path) - (1 if is_csv and not args.no_header else 0)
    if args.limit:
        import itertools

        records = itertools.islice(records, args.limit)
        total = min(total, args.limit)
    producer = make_producer(settings.bootstrap)
    try:
        report = send_all(producer, args.topic, records, rate=args.rate, total=total, progress=not args.quiet)
    finally:
        producer.close()
    print(f"replayed {report.sent} events in {report.seconds:.2f}s ({report.rate:,.0f} events/s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from roles.main_job import run_main_job

    parse_options(args.option)  # refuse a malformed option before starting anything
    return run_main_job(settings_from(args), duration_s=args.duration, rate=args.rate, options=args.option)


def add_process_options(parser: argparse.ArgumentParser) -> None:
    """``--option`` and ``--loglevel``, shared by the long-running roles."""
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="SERVICE.KEY=VALUE",
        help="service option, e.g. ctr.swap_interval_s=5 (repeatable)",
    )
    parser.add_argument(
        "--loglevel",
        default=os.environ.get("DRIFTLINE_LOGLEVEL", "warning"),
        help="debug, info, warning (default: $DRIFTLINE_LOGLEVEL, else warning)",
    )


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftline", description=__doc__)
    parser.add_argument("--home", help="state directory (checkpoints, broker data); default ./var")
    parser.add_argument("--bootstrap-servers", help="use this Kafka cluster instead of the embedded broker")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Apache Kafka broker in the foreground")
    p.add_argument("--port", type=int, help="PLAINTEXT port (default 9092)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create the service's topics if missing")
    p.add_argument(
        "--partitions",
        type=int,
        help="partitions of each keyed topic (default 12); refused if existing topics have another count",
    )
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run a worker: the services' stream parts with their HTTP endpoints")
    p.add_argument("--services", help="comma-separated: tally, forecast, ctr, rank (default all but tally)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    add_process_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="run a serving replica: queries from model-updates, no training")
    p.add_argument("--services", help="comma-separated services to serve (default ctr)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    add_process_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("produce", help="send JSON records (arguments, or one per line on stdin)")
    p.add_argument("--topic", required=True, help="observations, impressions, queries, labels, ...")
    p.add_argument("--key")
    p.add_argument(
        "--no-validate", action="store_true", help="send as given (to exercise the dead-letter path)"
    )
    p.add_argument("records", nargs="*")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("replay", help="replay a CSV time series or a JSON-lines file onto a topic")
    p.add_argument("file")
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    p.add_argument("--series", help="series id for CSV rows (default: file name)")
    p.add_argument("--limit", type=int, help="stop after N events")
    p.add_argument("--no-header", action="store_true", help="CSV has no header row")
    p.add_argument("--step-s", type=float, default=3600.0, help="seconds between rows without a time column")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="the main job: broker, worker, HTTP and a replay of real data")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0 = until Ctrl-C)")
    p.add_argument("--rate", type=float, default=200.0, help="replay rate, events/s per data set")
    p.add_argument("--services", help="services to run (default forecast,ctr,rank)")
    p.add_argument("--http-port", type=int)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="SERVICE.KEY=VALUE",
        help="service option for the worker",
    )
    p.set_defaults(func=cmd_run)
    add_token_commands(sub)

    wanted = set(sys.argv[1:] if argv is None else argv)
    for group, (module_name, help_text) in PLUGIN_CLIS.items():
        if group in wanted:
            importlib.import_module(module_name).register(sub)
        else:
            sub.add_parser(group, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from aiokafka.errors import KafkaError as AioKafkaError
    from kafka.errors import KafkaError

    from streams.broker import BrokerError
    from streams.producer import DeliveryError
    from streams.schemas import RecordError

    try:
        return int(args.func(args) or 0)
    except (BrokerError, DeliveryError, RecordError, ValueError, KeyError) as exc:  # incl. TopicLayoutError
        print(f"driftline: error: {exc}", file=sys.stderr)
        return 2
    except (KafkaError, AioKafkaError) as exc:  # e.g. refused credentials on a command that skips connect()
        print(f"driftline: error: Kafka refused the request: {exc!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
