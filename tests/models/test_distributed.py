"""Data-parallel CTR training (``models.ctr.distributed``): exact gradient averaging, and torchrun over Kafka.

The Kafka tests run ``torchrun --nproc-per-node=2`` on CPU (gloo) against the session broker with
synthetic labelled impressions (tests/models/synthetic.py), and read back the per-step parameter
checksums each rank appends and the checkpoint rank 0 writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from kafka import KafkaConsumer, TopicPartition

from models.checkpoints import Checkpoint, CheckpointStore
from models.ctr.distributed import MODEL, DataParallelTrainer, allot, offset_key
from models.ctr.features import CtrBatch, encode
from models.ctr.learner import CtrLearner
from streams.broker import EmbeddedBroker, free_port
from streams.producer import make_producer
from streams.topics import ensure_topics, topic_name
from tests.models.synthetic import SPEC, impressions, make_service

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
#: Small model for the torchrun runs: two fields, 4-dim embeddings, a 16-16 MLP.
MODEL_OPTIONS = [
    "categorical_fields=user,item",
    'dense_fields=["x"]',
    "buckets=1024",
    "embed_dim=4",
    "hidden=[16,16]",
    "embed_lr=0.01",
    "dense_lr=0.01",
    "warmup_samples=0",
]


# -- exactness: a 2-rank step equals one learn() on the concatenated batch ------------------------
def _learner() -> CtrLearner:
    # l2 > 0 exercises the lazy L2; a small clip ratio makes CowClip scale down most looked-up rows.
    service, _ = make_service(Path("."), batch_size=64, l2=1e-3, clip_ratio=0.01)
    return service.learner


def _batches() -> list[tuple[CtrBatch, CtrBatch]]:
    """Per step: rank 0's rows and rank 1's rows (uneven, and one step where rank 1 has none)."""
    rows = impressions(32 + 20 + 32 + 0 + 25 + 32, seed=3)
    cuts = [(0, 32, 52), (52, 84, 84), (84, 109, 141)]
    return [
        (
            encode(SPEC, rows[a:b], [r.clicked for r in rows[a:b]]),
            encode(SPEC, rows[b:c], [r.clicked for r in rows[b:c]]),
        )
        for a, b, c in cuts
    ]


def _rank_main(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        learner = _learner()
        trainer = DataParallelTrainer(learner, batch_size=32, rank=rank, world=2)
        clipped = []
        for pair in _batches():
            trainer.step(pair[rank], [len(part) for part in pair])
            clipped.append(learner.clipper.clipped_fraction if learner.clipper else 0.0)
        torch.save({"state": learner.state_dict(), "clipped": clipped}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_steps_equal_single_process_learn_on_the_joined_batch(tmp_path: Path) -> None:
    # spawn, not fork: a child forked after the parent used OpenMP can hang in its first parallel op.
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    reference = _learner()
    for first, second in _batches():
        joined = CtrBatch(
            torch.cat([first.categorical, second.categorical]),
            torch.cat([first.dense, second.dense]),
            torch.cat([first.labels, second.labels]),
        )
        reference.learn(joined)
    expected = reference.state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(0 < clipped < 1 for clipped in ranks[0]["clipped"])  # CowClip clipped some rows, not all
    for result in ranks:
        state = result["state"]
        assert state["samples_seen"] == expected["samples_seen"] == 141
        assert state["steps"] == expected["steps"] == 3
        for name, tensor in expected["net"].items():
            torch.testing.assert_close(state["net"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
        for key in ("count", "mean", "m2"):
            torch.testing.assert_close(state["normaliser"][key], expected["normaliser"][key])
    for name, tensor in ranks[0]["state"]["net"].items():  # the replicas agree bit for bit
        assert torch.equal(tensor, ranks[1]["state"]["net"][name]), name


def test_allot_cuts_rows_in_rank_order_at_the_sample_limit() -> None:
    assert allot([16, 16], None) == [16, 16]
    assert allot([16, 16], 20) == [16, 4]
    assert allot([0, 16], 5) == [0, 5]
    assert allot([16, 16], 0) == [0, 0]


# -- torchrun over Kafka ---------------------------------------------------------------------------
def _produce(bootstrap: str, per_partition: dict[int, list[bytes]]) -> None:
    producer = make_producer(bootstrap)
    for partition, values in per_partition.items():
        for value in values:
            producer.send(topic_name("impressions"), value, partition=partition)
    producer.flush()
    producer.close()


def _labelled(partition: int, count: int, seed: int) -> list[bytes]:
    return [row.to_bytes() for row in impressions(count, seed=seed * 10 + partition)]


def _end_offsets(bootstrap: str) -> dict[str, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    topic = topic_name("impressions")
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    return {offset_key(topic, tp.partition): offset for tp, offset in ends.items()}


def _command(store: Path, checksums: Path, *extra: str, restarts: int = 0) -> list[str]:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        f"--max-restarts={restarts}",
        "--monitor-interval=0.2",
    ]
    options = [item for option in MODEL_OPTIONS for item in ("--option", option)]
    return [
        *torchrun,
        "-m",
        "models.ctr.distributed",
        "--checkpoint-store",
        str(store),
        "--checksums",
        str(checksums),
        *options,
        *extra,
    ]


def _env(kafka: EmbeddedBroker, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "DRIFTLINE_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "DRIFTLINE_TOPIC_PREFIX": prefix,
        "DRIFTLINE_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _checksums(path: Path) -> list[dict[str, Any]]:
    """The complete lines so far (a line being written while we read has no newline yet)."""
    complete = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in complete]


def _assert_ranks_agree(lines: list[dict[str, Any]], killed_in: int | None = None) -> None:
    """Both ranks logged every step (per restart), with the same checksum and sample count.

    In restart ``killed_in`` a rank died: its last step may have only the survivor's line.
    """
    by_step: dict[tuple[int, int], dict[int, tuple[float, int]]] = defaultdict(dict)
    for line in lines:
        by_step[line["restart"], line["step"]][line["rank"]] = (line["checksum"], line["samples"])
    assert by_step
    last_killed = max((step for restart, step in by_step if restart == killed_in), default=None)
    for (restart, step), ranks in by_step.items():
        if (restart, step) == (killed_in, last_killed) and len(ranks) == 1:
            continue
        assert set(ranks) == {0, 1}, f"restart {restart} step {step}: ranks {sorted(ranks)}"
        assert ranks[0] == ranks[1], f"restart {restart} step {step}: {ranks}"


def _final(store: Path) -> Checkpoint:
    return CheckpointStore(store, MODEL).load()


@pytest.mark.kafka
def test_ranks_hold_equal_parameters_after_every_step(
    kafka: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    garbage = [b"not json", b'{"schema": "impression/1", "id": "x"}', b'{"schema": "query/1"}']
    unlabelled = [row.to_bytes() for row in impressions(5, seed=99, labelled=False)]
    # Rank 0 (partitions 0, 2) has 5x the rows of rank 1 (1, 3): rank 1 runs dry and joins with empty batches.
    _produce(
        kafka.bootstrap,
        {
            0: _labelled(0, 300, 1),
            2: _labelled(2, 300, 1),
            1: _labelled(1, 60, 1),
            3: [*_labelled(3, 30, 1), *garbage, *unlabelled, *_labelled(3, 30, 2)],
        },
    )
    checksums = tmp_path / "checksums.jsonl"
    out = _run(
        _command(
            tmp_path / "store",
            checksums,
            "--batch-size",
            "16",
            "--checkpoint-every",
            "10",
            "--max-samples",
            "500",
        ),
        _env(kafka, topic_prefix),
    )

    lines = _checksums(checksums)
    _assert_ranks_agree(lines)
    steps = sorted({line["step"] for line in lines})
    assert steps == list(range(1, len(steps) + 1))
    assert max(line["samples"] for line in lines) == 500 == _final(tmp_path / "store").meta["samples"]
    assert len(steps) > 500 // 32 + 1  # more steps than even batches would need: rank 1 ran dry
    assert "skipped 8 unusable records (invalid 3, unlabelled 5)" in out
    assert "samples/s total over 2 ranks" in out


@pytest.mark.kafka
def test_checkpoint_holds_every_partition_once_at_its_end_offset(
    kafka: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    tail = [row.to_bytes() for row in impressions(3, seed=98, labelled=False)]  # read, skipped, still counted
    _produce(kafka.bootstrap, {p: [*_labelled(p, 100 + 10 * p, 2), *tail] for p in range(PARTITIONS)})
    store = tmp_path / "store"
    out = _run(
        _command(store, tmp_path / "checksums.jsonl", "--batch-size", "32", "--checkpoint-every", "4"),
        _env(kafka, topic_prefix),
    )

    final = _final(store)
    assert final.offsets == _end_offsets(kafka.bootstrap)
    assert len(final.offsets) == PARTITIONS
    assert final.meta["samples"] == final.state["samples_seen"] == 100 + 110 + 120 + 130
    assert final.meta["skipped"] == {"unlabelled": 3 * PARTITIONS}
    assert "trained 460 samples in this run" in out


@pytest.mark.kafka
def test_killed_rank_restarts_the_group_from_the_checkpoint_without_loss_or_double_count(
    kafka: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    _produce(kafka.bootstrap, {p: _labelled(p, 200, 3) for p in range(PARTITIONS)})
    store, checksums = tmp_path / "store", tmp_path / "checksums.jsonl"
    command = _command(
        store, checksums, "--batch-size", "16", "--checkpoint-every", "5", "--idle-timeout", "2", restarts=1
    )
    log = (tmp_path / "torchrun.log").open("w")
    process = subprocess.Popen(
        command, env=_env(kafka, topic_prefix), cwd=ROOT, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline and process.poll() is None:
            rank1 = [line for line in _checksums(checksums) if line["rank"] == 1]
            if rank1 and CheckpointStore(store, MODEL).versions():
                victim = rank1[-1]
            time.sleep(0.05)
        assert victim is not None, (tmp_path / "torchrun.log").read_text()
        os.kill(victim["pid"], signal.SIGKILL)  # raises if the rank had already exited: the kill is mid-run
        # More data while the group restarts: the resumed run must train it as well.
        _produce(kafka.bootstrap, {p: _labelled(p, 50, 4) for p in range(PARTITIONS)})
        assert process.wait(timeout=120) == 0, (tmp_path / "torchrun.log").read_text()
    finally:
        if process.poll() is None:  # a failed test must not leave ranks behind: end the whole session
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()

    lines = _checksums(checksums)
    _assert_ranks_agree(lines, killed_in=0)
    resumed = [line for line in lines if line["restart"] == 1]
    assert resumed, "the group never restarted"
    assert min(line["step"] for line in resumed) > 1  # resumed from a checkpoint, not from scratch
    final = _final(store)
    assert final.meta["samples"] == final.state["samples_seen"] == PARTITIONS * (200 + 50)
    assert final.offsets == _end_offsets(kafka.bootstrap)
