"""Data-parallel CTR training over Kafka with torch.distributed, started by ``torchrun``.

``torchrun --nproc-per-node=2 -m models.ctr.distributed --checkpoint-store DIR --max-samples N``

Rank ``r`` of ``W`` reads the ``impressions`` partitions ``p`` with ``p % W == r``, assigned by
hand (no consumer group: the checkpoint, not Kafka, owns the offsets). Each step:

1. every rank fills a local micro-batch of up to ``--batch-size`` labelled impressions; records
   that cannot be trained on (bad schema, no ``clicked``, unknown field) are skipped and counted;
2. the ranks exchange how many rows they have and whether they are done; each takes its rows
   (cut in rank order at ``--max-samples``); a rank without rows still joins every collective;
3. the global batch's ids and dense values are all-gathered: every rank folds the same values into
   the running normaliser and knows the per-row lookup counts CowClip and the lazy L2 need;
4. each rank back-propagates ``sum(local BCE) / global rows`` (rank 0 adds the L2 term of the
   global batch), the gradients are summed with one all_reduce, so every rank holds the gradient
   of the global batch, clips it with CowClip and steps: the replicas stay identical.

So a step over ``W`` ranks equals one ``CtrLearner.learn`` on the concatenated batch (up to float
summation order). The run ends once ``--max-samples`` are trained in all, or when every rank has
read its partitions to their end offsets and seen nothing new for ``--idle-timeout`` seconds
(default 0: a bounded pass over what is there). Rank 0 checkpoints every ``--checkpoint-every``
steps the learner state plus every rank's offsets (the next offset to read per partition, Kafka's
committed-offset convention) and the trained sample count; on (re)start every rank loads the newest checkpoint
and seeks there, so ``torchrun --max-restarts=K`` resumes without losing or repeating a sample.
Dead letters are the worker's job: this trainer only counts what it skips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from models.checkpoints import CheckpointStore
from models.ctr.features import CtrBatch, FeatureError, FeatureSpec, encode
from models.ctr.learner import CtrLearner
from models.ctr.service import build_service
from models.device import default_device
from streams.broker import free_port
from streams.cli import parse_options
from streams.config import Settings
from streams.kafka_security import client_security
from streams.schemas import Impression, RecordError, parse_record
from streams.topics import topic_name

MODEL = "ctr-distributed"
#: How long a poll waits for records that the end offsets say exist.
FETCH_POLL_MS = 1000
#: Pause between steps when no rank has rows but some still wait for data (no busy loop).
IDLE_SLEEP_S = 0.1
#: How long a rank waits for its peers to join the group.
STORE_TIMEOUT = timedelta(minutes=5)


def offset_key(topic: str, partition: int) -> str:
    """Checkpoint key of a partition (the worker's ``topic:partition`` form)."""
    return f"{topic}:{partition}"


def classify(value: bytes | None, spec: FeatureSpec) -> tuple[Impression | None, str]:
    """The impression to train on, or None and why not (``invalid``, ``unlabelled``, ``features``)."""
    if value is None:
        return None, "invalid"
    try:
        record = parse_record(value, Impression)
    except RecordError:
        return None, "invalid"
    assert isinstance(record, Impression)
    if record.clicked is None:
        return None, "unlabelled"
    try:
        spec.check(record)
    except FeatureError:
        return None, "features"
    return record, ""


@dataclass(frozen=True)
class Entry:
    """One consumed record: where it came from and the impression, or why it is unusable."""

    partition: int
    offset: int
    impression: Impression | None
    reason: str


class PartitionReader:
    """This rank's partitions of a topic, read from given offsets, handed out in usable rows.

    :attr:`next_offsets` moves only when rows are taken (skipped records included), so it is
    exactly what the model has absorbed.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rank: int,
        world: int,
        spec: FeatureSpec,
        start: Mapping[str, int],
        idle_timeout_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        self.topic = topic
        self.spec = spec
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **client_security(),
            )
        except KafkaError as exc:
            raise SystemExit(f"cannot reach Kafka at {bootstrap}: {exc}") from None
        partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            self.consumer.close()
            raise SystemExit(
                f"topic {topic!r} does not exist on {bootstrap}: create it with `driftline topics`"
            )
        self.partitions = sorted(p for p in partitions if p % world == rank)
        self.tps = [TopicPartition(topic, p) for p in self.partitions]
        self.consumer.assign(self.tps)
        beginnings = self.consumer.beginning_offsets(self.tps)
        self.next_offsets: dict[int, int] = {}
        for tp in self.tps:
            offset = start.get(offset_key(topic, tp.partition), beginnings[tp])
            self.consumer.seek(tp, offset)
            self.next_offsets[tp.partition] = offset
        self.ends: dict[Any, int] = {}
        self.buffer: list[Entry] = []
        self.usable = 0
        self.skipped: Counter[str] = Counter()
        self.last_data = clock()

    def offsets(self) -> dict[str, int]:
        """Next offset to read per partition of this rank (what a checkpoint stores)."""
        return {offset_key(self.topic, p): offset for p, offset in self.next_offsets.items()}

    def fill(self, wanted: int) -> None:
        """Poll until ``wanted`` usable rows are buffered or nothing more is there right now."""
        while self.tps and self.usable < wanted:
            caught_up = self._caught_up()
            if caught_up and self.idle_timeout_s <= 0:
                return
            polled = self.consumer.poll(
                timeout_ms=0 if caught_up else FETCH_POLL_MS, max_records=wanted - self.usable
            )
            if not polled:
                return
            self.last_data = self.clock()
            for records in polled.values():
                for record in records:
                    impression, reason = classify(record.value, self.spec)
                    self.buffer.append(Entry(record.partition, record.offset, impression, reason))
                    self.usable += impression is not None

    def done(self) -> bool:
        """No usable row buffered, every partition read to its end, and idle for the timeout."""
        if self.usable or not self._caught_up():
            return False
        return self.clock() - self.last_data >= self.idle_timeout_s

    def take(self, count: int) -> list[Impression]:
        """Hand out ``count`` usable rows; unusable records up to the next usable one are skipped."""
        taken: list[Impression] = []
        consumed = 0
        for entry in self.buffer:
            if entry.impression is not None:
                if len(taken) == count:
                    break
                taken.append(entry.impression)
            else:
                self.skipped[entry.reason] += 1
            self.next_offsets[entry.partition] = entry.offset + 1
            consumed += 1
        del self.buffer[:consumed]
        self.usable -= len(taken)
        return taken

    def close(self) -> None:
        self.consumer.close()

    def _caught_up(self) -> bool:
        """Every partition's position at its end offset (refreshed from the broker when reached)."""

        def at_end() -> bool:
            return all(self.consumer.position(tp) >= self.ends.get(tp, 0) for tp in self.tps)

        if not at_end():
            return False
        self.ends = self.consumer.end_offsets(self.tps)
        return at_end()


def allot(available: Sequence[int], remaining: int | None) -> list[int]:
    """Rows each rank trains this step: all it has, cut in rank order once ``remaining`` is used up."""
    takes = []
    for count in available:
        take = count if remaining is None else min(count, remaining)
        takes.append(take)
        if remaining is not None:
            remaining -= take
    return takes


class DataParallelTrainer:
    """One replica of a :class:`CtrLearner` per rank, stepped on the gradient of the global batch.

    Composed from the learner's public parts (net, normaliser, tables, optimisers, clipper,
    scheduler), mirroring ``CtrLearner.learn`` with collectives between backward and step.
    """

    def __init__(self, learner: CtrLearner, batch_size: int, rank: int, world: int) -> None:
        self.learner = learner
        self.batch_size = batch_size
        self.rank = rank
        self.world = world
        self.params = list(learner.net.parameters())
        self.sizes = [p.numel() for p in self.params]

    def gather_counts(self, values: Sequence[int]) -> list[list[int]]:
        """Every rank's ``values`` (same length everywhere), in rank order."""
        mine = torch.tensor(list(values), dtype=torch.long, device=self.learner.device)
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        return [row.tolist() for row in everyone]

    def step(self, local: CtrBatch, takes: Sequence[int]) -> float:
        """One synchronous step on this rank's ``local`` rows (``takes[r]`` rows on rank r).

        Returns the global batch's summed BCE before the update (progressive, test-then-train).
        """
        learner, device = self.learner, self.learner.device
        total = sum(takes)
        categorical, dense = self._gather(local, takes)
        learner.normaliser.update(dense)
        learner.net.train()
        loss = torch.zeros((), device=device)
        bce = torch.zeros((), device=device)
        if len(local):
            assert local.labels is not None
            logits = learner.net(
                local.categorical.to(device), learner.normaliser.transform(local.dense).to(device)
            )
            bce = nn.functional.binary_cross_entropy_with_logits(
                logits, local.labels.to(device), reduction="sum"
            )
            loss = bce / total
        if self.rank == 0 and learner.l2 > 0:  # once per global batch, over its distinct rows
            looked_up = [table.weight[torch.unique(table.rows(categorical))] for table in learner.tables]
            loss = loss + learner.l2 * sum(rows.pow(2).sum() for rows in looked_up)
        learner.embed_optimizer.zero_grad(set_to_none=True)
        learner.dense_optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        bce_total = self._all_reduce_gradients(bce.detach())
        if learner.clipper is not None:
            learner.clipper.step([learner.net.embedding.rows(categorical)])
        else:
            learner.embed_optimizer.step()
        learner.dense_optimizer.step()
        learner.scheduler.step()
        learner.steps += 1
        learner.samples_seen += total
        return bce_total

    def checksum(self) -> float:
        """Sum of every parameter in float64: equal on all ranks while the replicas agree."""
        with torch.no_grad():
            return float(sum(p.detach().double().sum() for p in self.params))

    def _gather(self, local: CtrBatch, takes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch's bucket ids ``[N, F]`` and raw dense values ``[N, D]``, on every rank.

        One all_gather of float64 rows (ids < 2^53 are exact), padded to the per-rank batch size.
        """
        fields = local.categorical.shape[1]
        padded = torch.full(
            (self.batch_size, fields + local.dense.shape[1]), float("nan"), dtype=torch.float64
        )
        padded[: len(local), :fields] = local.categorical.to(torch.float64)
        padded[: len(local), fields:] = local.dense.to(torch.float64)
        padded = padded.to(self.learner.device)
        everyone = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(everyone, padded)
        rows = torch.cat([part[:take] for part, take in zip(everyone, takes, strict=True)])
        return rows[:, :fields].long(), rows[:, fields:].to("cpu", torch.float32)

    def _all_reduce_gradients(self, bce: torch.Tensor) -> float:
        """Sum every parameter's gradient (and the BCE) over ranks with one all_reduce."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [bce.reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        for param, chunk in zip(self.params, flat[:-1].split(self.sizes), strict=True):
            param.grad = chunk.view_as(param)
        return float(flat[-1])


class ChecksumLog:
    """Appends one JSON line per step for this rank: step, samples, parameter checksum, pid."""

    def __init__(self, path: Path, rank: int, restart: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.rank = rank
        self.restart = restart

    def write(self, step: int, samples: int, checksum: float) -> None:
        line = {
            "step": step,
            "rank": self.rank,
            "restart": self.restart,
            "pid": os.getpid(),
            "samples": samples,
            "checksum": checksum,
        }
        os.write(self.fd, (json.dumps(line) + "\n").encode())  # one write: lines of ranks never interleave

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class RankReport:
    """What each rank sends rank 0 at a checkpoint and at the end."""

    offsets: dict[str, int]
    skipped: dict[str, int]
    samples: int


@dataclass
class Progress:
    """What the run has saved so far (on every rank, so all agree when a checkpoint is due)."""

    steps: int
    offsets: dict[str, int]
    skipped: Counter[str] = field(default_factory=Counter)


def gather_reports(reader: PartitionReader, samples: int, world: int) -> list[RankReport]:
    mine = RankReport(reader.offsets(), dict(reader.skipped), samples)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    return everyone


def merged_offsets(reports: Sequence[RankReport]) -> dict[str, int]:
    """All ranks' offsets in one map; a partition read by two ranks is a bug, so it raises."""
    offsets: dict[str, int] = {}
    for report in reports:
        twice = offsets.keys() & report.offsets.keys()
        if twice:
            raise RuntimeError(f"partitions read by more than one rank: {sorted(twice)}")
        offsets.update(report.offsets)
    return offsets


def skipped_total(base: Counter[str], reports: Sequence[RankReport]) -> Counter[str]:
    total = Counter(base)
    for report in reports:
        total.update(report.skipped)
    return total


def save(
    store: CheckpointStore, learner: CtrLearner, offsets: dict[str, int], skipped: Counter[str], world: int
) -> int:
    meta = {
        "samples": learner.samples_seen,
        "steps": learner.steps,
        "skipped": dict(skipped),
        "world_size": world,
    }
    return store.save(learner.state_dict(), offsets, meta)


def build_learner(options: Mapping[str, Any], global_batch: int) -> CtrLearner:
    """The worker's CTR learner for ``--option`` keys; the scaling rule sees the global batch."""
    if "batch_size" in options:
        raise SystemExit("set the per-rank batch with --batch-size, not --option batch_size")
    try:
        return build_service(Path("."), **options, batch_size=global_batch).learner
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"bad --option: {exc}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node=N -m models.ctr.distributed",
        description="Data-parallel CTR training on the impressions topic (one process per rank).",
    )
    parser.add_argument(
        "--checkpoint-store", type=Path, help="checkpoint root (default: the settings' store)"
    )
    parser.add_argument(
        "--max-samples", type=_positive, help="stop once this many samples are trained in all"
    )
    parser.add_argument("--batch-size", type=_positive, default=1024, help="rows per rank per step")
    parser.add_argument("--checkpoint-every", type=_positive, default=50, help="steps between checkpoints")
    parser.add_argument("--checksums", type=Path, help="append each rank's parameter checksum per step here")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="seconds to wait for new records once every partition is read to its end (default 0: stop)",
    )
    parser.add_argument("--bootstrap-servers", help="Kafka cluster (default $DRIFTLINE_BOOTSTRAP_SERVERS)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="CTR model option as for the worker's ctr service, e.g. model=dcn, embed_dim=4 (repeatable)",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _init_process_group() -> tuple[int, int]:
    """Join the group torchrun describes (a one-rank group without torchrun); return rank, world.

    NCCL when the device is CUDA (each rank on GPU ``LOCAL_RANK`` unless one is named), else gloo.
    """
    device = default_device()
    if device.type == "cuda" and device.index is None:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" not in os.environ:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    else:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, store=_attempt_store(rank, world), rank=rank, world_size=world)
    return dist.get_rank(), dist.get_world_size()


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The rendezvous store under a prefix of its own for this restart attempt.

    With static rendezvous (``--master-port``) torchrun keeps one store across restarts, and the
    plain ``env://`` init reuses its keys: a restarted rank could read the address a killed peer
    published and fail to connect. A per-attempt prefix gives every attempt fresh keys.
    """
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_hosts,
        timeout=STORE_TIMEOUT,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"{MODEL}/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
    options = parse_options([f"ctr.{pair}" for pair in args.option]).get("ctr", {})
    rank, world = _init_process_group()
    try:
        learner = build_learner(options, args.batch_size * world)
        store = CheckpointStore(args.checkpoint_store or settings.checkpoint_root, MODEL)
        progress = restore(store, learner, rank)
        reader = PartitionReader(
            settings.bootstrap,
            topic_name("impressions"),
            rank,
            world,
            learner.spec,
            progress.offsets,
            args.idle_timeout,
        )
        try:
            train(args, learner, store, reader, progress, rank, world)
        finally:
            reader.close()
    finally:
        dist.destroy_process_group()
    return 0


def restore(store: CheckpointStore, learner: CtrLearner, rank: int) -> Progress:
    """Load the newest checkpoint into ``learner`` (every rank does); fresh progress if there is none."""
    if store.current_version() is None:
        if rank == 0:
            print(
                f"{MODEL}: no checkpoint in {store.dir}, reading every partition from its beginning",
                file=sys.stderr,
            )
        return Progress(0, {})
    checkpoint = store.load()
    learner.load_state_dict(checkpoint.state)
    if rank == 0:
        print(
            f"{MODEL}: resumed from v{checkpoint.version} ({learner.samples_seen} samples, "
            f"{learner.steps} steps)",
            file=sys.stderr,
        )
    return Progress(learner.steps, dict(checkpoint.offsets), Counter(checkpoint.meta.get("skipped", {})))


def train(
    args: argparse.Namespace,
    learner: CtrLearner,
    store: CheckpointStore,
    reader: PartitionReader,
    progress: Progress,
    rank: int,
    world: int,
) -> None:
    """Step until every rank is out of data or ``--max-samples`` is reached; checkpoint on rank 0."""
    trainer = DataParallelTrainer(learner, args.batch_size, rank, world)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    checksums = ChecksumLog(args.checksums, rank, restart) if args.checksums else None
    start_samples, local_samples, bce_sum = learner.samples_seen, 0, 0.0
    started = time.monotonic()

    def checkpoint() -> list[RankReport]:
        """Every rank's report; rank 0 saves them with the state unless nothing changed."""
        reports = gather_reports(reader, local_samples, world)
        offsets = merged_offsets(reports)
        if learner.steps != progress.steps or offsets != progress.offsets:
            if rank == 0:
                save(store, learner, offsets, skipped_total(progress.skipped, reports), world)
            progress.steps, progress.offsets = learner.steps, offsets
        return reports

    while args.max_samples is None or learner.samples_seen < args.max_samples:
        reader.fill(args.batch_size)
        statuses = trainer.gather_counts([reader.usable, int(reader.done())])
        remaining = None if args.max_samples is None else args.max_samples - learner.samples_seen
        takes = allot([usable for usable, _ in statuses], remaining)
        rows = reader.take(takes[rank])
        if sum(takes) == 0:
            if all(done for _, done in statuses):
                break
            time.sleep(IDLE_SLEEP_S)
            continue
        bce_sum += trainer.step(encode(learner.spec, rows, [int(row.clicked or 0) for row in rows]), takes)
        local_samples += len(rows)
        if checksums is not None:
            checksums.write(learner.steps, learner.samples_seen, trainer.checksum())
        if learner.steps % args.checkpoint_every == 0:
            checkpoint()
    elapsed = time.monotonic() - started
    reports = checkpoint()
    if checksums is not None:
        checksums.close()
    if rank == 0:
        print(summary(reports, learner, start_samples, bce_sum, elapsed, progress.skipped, world))


def summary(
    reports: Sequence[RankReport],
    learner: CtrLearner,
    start_samples: int,
    bce_sum: float,
    elapsed: float,
    base_skipped: Counter[str],
    world: int,
) -> str:
    """The run's closing lines: samples, skipped records, progressive logloss and throughput."""
    trained = learner.samples_seen - start_samples
    skipped = skipped_total(base_skipped, reports)
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(skipped.items())) or "none"
    rate = trained / elapsed if elapsed > 0 else 0.0
    per_rank = ", ".join(
        f"rank {r} {report.samples / max(elapsed, 1e-9):,.0f}" for r, report in enumerate(reports)
    )
    logloss = f"{bce_sum / trained:.4f}" if trained else "-"
    return (
        f"{MODEL}: trained {trained} samples in this run "
        f"({learner.samples_seen} in all, {learner.steps} steps); "
        f"skipped {sum(skipped.values())} unusable records ({kinds}); progressive logloss {logloss}\n"
        f"throughput: {rate:,.0f} samples/s total over {world} ranks ({per_rank} samples/s) "
        f"in {elapsed:.2f} s, backend {dist.get_backend()}, device {learner.device}"
    )


if __name__ == "__main__":
    sys.exit(main())
