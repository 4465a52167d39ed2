"""The synthetic Criteo-layout stream: reproducible, valid records, Criteo-like statistics, learnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.ctr.metrics import roc_auc
from models.ctr.synth import (
    BLOCK,
    CATEGORICAL_FIELDS,
    CRITEO_CARDINALITIES,
    DENSE_FIELDS,
    CriteoSynth,
    SynthBatch,
    SynthConfig,
    head_share,
)
from models.ctr.synth_jsonl import json_chunks
from streams.cli import main
from streams.schemas import Impression, parse_record

C3 = CATEGORICAL_FIELDS.index("C3")  # the largest field: 10,131,227 ids
C7 = CATEGORICAL_FIELDS.index("C7")  # 12,517 ids: the smallest field that gets new ids
C9 = CATEGORICAL_FIELDS.index("C9")  # 3 ids


@pytest.fixture(scope="module")
def stream() -> CriteoSynth:
    return CriteoSynth(SynthConfig(seed=1, id_lifetime=0))


@pytest.fixture(scope="module")
def sample(stream: CriteoSynth) -> SynthBatch:
    return stream.batch(0, 200_000)


def assert_same(a: SynthBatch, b: SynthBatch) -> None:
    for name in ("rows", "ids", "dense", "clicked", "probability"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_a_seed_gives_the_same_rows_whatever_range_they_are_asked_in(sample: SynthBatch) -> None:
    again = CriteoSynth(SynthConfig(seed=1, id_lifetime=0))
    assert_same(again.batch(0, 200_000), sample)
    # A range that starts and ends inside blocks is the same rows as in the long run.
    start, stop = BLOCK - 1_000, 2 * BLOCK + 5
    assert_same(again.batch(start, stop), sample.slice(start, stop))
    other = CriteoSynth(SynthConfig(seed=2, id_lifetime=0)).batch(0, 1_000)
    assert (other.ids != sample.ids[:1_000]).mean() > 0.5
    assert not np.array_equal(other.clicked, sample.clicked[:1_000])


def test_layout_ranges_and_missing_counts(sample: SynthBatch) -> None:
    assert sample.ids.shape == (200_000, 26) and sample.ids.dtype == np.uint32
    assert sample.dense.shape == (200_000, 13)
    present = ~np.isnan(sample.dense)
    counts = sample.dense[present]
    assert counts.min() >= 0 and np.all(counts == np.floor(counts))
    missing = 1 - present.mean(axis=0)
    assert missing[DENSE_FIELDS.index("I2")] == 0  # like Criteo: some fields always there,
    assert 0.7 < missing[DENSE_FIELDS.index("I12")] < 0.8  # others mostly missing
    # Each field has at most its cardinality of distinct ids (no churn here).
    for field, cardinality in enumerate(CRITEO_CARDINALITIES):
        assert len(np.unique(sample.ids[:, field])) <= cardinality


def test_the_positive_rate_is_criteo_s(sample: SynthBatch) -> None:
    assert 0.245 < sample.clicked.mean() < 0.267
    # The teacher's own probabilities are calibrated, and they separate clicks well.
    assert abs(sample.probability.mean() - sample.clicked.mean()) < 0.01
    assert roc_auc(sample.clicked, sample.probability) > 0.75


def test_a_few_ids_carry_most_rows_like_zipf(sample: SynthBatch) -> None:
    _, counts = np.unique(sample.ids[:, C3], return_counts=True)
    top_1000 = np.sort(counts)[::-1][:1_000].sum() / len(sample)
    expected = head_share(CRITEO_CARDINALITIES[C3], 1.0, 1_000)  # 0.428
    assert abs(top_1000 - expected) < 0.02
    # The long tail: most distinct ids of the largest field are seen once.
    assert (counts == 1).mean() > 0.5
    _, counts = np.unique(sample.ids[:, C9], return_counts=True)
    shares = np.sort(counts)[::-1] / len(sample)
    expected_shares = np.diff([0.0] + [head_share(3, 1.0, k) for k in (1, 2, 3)])  # .5, .29, .21
    np.testing.assert_allclose(shares, expected_shares, atol=0.01)


def new_id_share(batch: SynthBatch, field: int, split: int) -> float:
    """Share of rows after ``split`` whose id in ``field`` never occurred before it."""
    return float(np.mean(~np.isin(batch.ids[split:, field], batch.ids[:split, field])))


def test_new_ids_keep_appearing() -> None:
    steady = CriteoSynth(SynthConfig(seed=3, id_lifetime=0)).batch(0, 400_000)
    churning = CriteoSynth(SynthConfig(seed=3, id_lifetime=200_000)).batch(0, 400_000)
    # Without churn a mid-sized field runs out of new ids; the 10M-id field still brings new ones.
    assert new_id_share(steady, C7, 300_000) < 0.01
    assert new_id_share(steady, C3, 300_000) > 0.25
    # With churn, slots take new ids all the time, in mid-sized fields too, head slots included.
    assert new_id_share(churning, C7, 300_000) > 0.2
    assert new_id_share(churning, C3, 300_000) > new_id_share(steady, C3, 300_000) + 0.1
    _, counts = np.unique(churning.ids[300_000:, C7], return_counts=True)
    top_new = np.sort(counts[~np.isin(np.unique(churning.ids[300_000:, C7]), churning.ids[:300_000, C7])])
    assert top_new[-1] > 100, "no new id became popular"
    # Small fields keep their ids.
    assert new_id_share(churning, C9, 300_000) == 0


def test_rare_ids_carry_as_much_teacher_signal_as_head_ids(stream: CriteoSynth) -> None:
    head = stream.teacher.first_order(C3, np.arange(1, 5_001))
    tail = stream.teacher.first_order(C3, np.arange(5_000_001, 5_005_001))
    assert 0.8 < tail.std() / head.std() < 1.25
    assert head.std() > 0.1


def test_drift_moves_the_teacher_and_keeps_the_positive_rate() -> None:
    steady = CriteoSynth(SynthConfig(seed=4))
    drifting = CriteoSynth(SynthConfig(seed=4, drift=1.0))  # a quarter turn by ~1.57M rows
    early, late = 0, 24  # blocks
    codes = np.random.default_rng(0).integers(0, 2**16, (26, 5_000)).astype(np.uint16)
    z = np.random.default_rng(1).standard_normal((13, 5_000)).astype(np.float32)

    def correlation(synth: CriteoSynth) -> float:
        a, b = (synth.teacher.raw_logits(codes, z, block) for block in (early, late))
        return float(np.corrcoef(a, b)[0, 1])

    assert correlation(steady) == pytest.approx(1.0)
    assert correlation(drifting) < 0.3
    assert (
        np.corrcoef(steady.teacher.raw_logits(codes, z, early), drifting.teacher.raw_logits(codes, z, early))[
            0, 1
        ]
        > 0.99
    )  # both start from the same teacher
    rows = drifting.batch(late * BLOCK, late * BLOCK + 100_000)
    assert 0.235 < rows.clicked.mean() < 0.275


def test_bad_configurations_are_refused() -> None:
    for bad in (
        {"positive_rate": 1.5},
        {"zipf_exponent": 0.0},
        {"cardinalities": ()},
        {"cardinalities": (0, 5)},
        {"id_lifetime": -1},
        {"seed": -1},
    ):
        with pytest.raises(ValueError):
            SynthConfig(**bad)
    with pytest.raises(ValueError, match="start <= stop"):
        CriteoSynth().batch(10, 5)


def test_the_cli_writes_impression_lines_that_match_the_arrays(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth.jsonl"
    assert main(["ctr", "synth", "--rows", "3000", "--seed", "7", "--out", str(out), "--quiet"]) == 0
    assert "wrote 3,000 impressions" in capsys.readouterr().out
    lines = out.read_bytes().splitlines()
    assert len(lines) == 3000
    records = [parse_record(line, Impression) for line in lines]  # raises on any invalid line
    expected = CriteoSynth(SynthConfig(seed=7)).batch(0, 3000)
    assert len({r.id for r in records}) == 3000
    assert [r.ts for r in records] == sorted(r.ts for r in records)
    for i, record in enumerate(records):
        assert isinstance(record, Impression)
        assert list(record.categorical) == list(CATEGORICAL_FIELDS)
        assert [int(v, 16) for v in record.categorical.values()] == expected.ids[i].tolist()
        assert all(len(v) == 8 for v in record.categorical.values())
        present = ~np.isnan(expected.dense[i])
        assert record.dense == dict(
            zip(np.array(DENSE_FIELDS)[present], expected.dense[i][present], strict=True)
        )
        assert record.clicked == expected.clicked[i]
    assert any(len(r.dense) < 13 for r in records) and any(r.clicked == 1 for r in records)
    # Every line is one JSON object with exactly the record's keys.
    assert set(json.loads(lines[0])) == {"schema", "id", "ts", "categorical", "dense", "clicked"}


def test_the_cli_writes_later_rows_with_start_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    full, tail = tmp_path / "full.jsonl", tmp_path / "tail.jsonl"
    assert main(["ctr", "synth", "--rows", "1500", "--out", str(full), "--quiet"]) == 0
    assert main(["ctr", "synth", "--rows", "500", "--start", "1000", "--out", str(tail), "--quiet"]) == 0
    assert tail.read_bytes().splitlines() == full.read_bytes().splitlines()[1000:]
    with pytest.raises(SystemExit):
        main(["ctr", "synth", "--rows", "-3", "--out", str(full)])
    with pytest.raises(SystemExit):
        main(["ctr", "synth", "--rows", "3"])  # neither --out nor --topic
    capsys.readouterr()
    assert main(["ctr", "synth", "--rows", "3", "--out", str(tmp_path / "missing" / "x.jsonl")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert main(["ctr", "synth", "--rows", "3", "--topic", "queries"]) == 2
    assert "does not carry impressions" in capsys.readouterr().err


def test_json_chunks_cover_the_range_exactly() -> None:
    synth = CriteoSynth(SynthConfig(seed=9))
    chunks = list(json_chunks(synth, 5, 40_005))
    assert sum(rows for rows, _ in chunks) == 40_000
    assert all(chunk.count(b"\n") == rows for rows, chunk in chunks)
    first = json.loads(chunks[0][1].split(b"\n", 1)[0])
    assert first["id"] == "s9-5"


def test_a_model_learns_the_stream_including_rows_with_rare_ids() -> None:
    """Logistic regression on hashed ids (Adagrad, one pass): clearly better than chance, also where
    the largest field's id was (almost) never seen in training, so a bench measures an optimizer on
    real signal."""
    synth = CriteoSynth(SynthConfig(seed=2))
    train, test = synth.batch(0, 200_000), synth.batch(200_000, 240_000)
    buckets, fields = 2**15, len(CATEGORICAL_FIELDS)

    def features(batch: SynthBatch) -> tuple[np.ndarray, np.ndarray]:
        rows = (batch.ids.astype(np.int64) % buckets) + np.arange(fields) * buckets
        dense = np.log1p(np.nan_to_num(batch.dense, nan=0.0))
        return rows, np.column_stack([dense, np.ones(len(batch))])  # with a bias column

    weights, dense_weights = np.zeros(fields * buckets), np.zeros(14)
    squares, dense_squares = np.full(fields * buckets, 1e-8), np.full(14, 1e-8)
    rows, dense = features(train)
    for start in range(0, len(train), 2048):
        part = slice(start, start + 2048)
        logits = weights[rows[part]].sum(1) + dense[part] @ dense_weights
        error = (1 / (1 + np.exp(-logits)) - train.clicked[part]) / len(logits)
        grad = np.bincount(rows[part].ravel(), weights=np.repeat(error, fields), minlength=len(weights))
        dense_grad = dense[part].T @ error
        squares += grad**2
        dense_squares += dense_grad**2
        weights -= 0.1 * grad / np.sqrt(squares)
        dense_weights -= 0.1 * dense_grad / np.sqrt(dense_squares)
    rows, dense = features(test)
    scores = weights[rows].sum(1) + dense @ dense_weights
    assert roc_auc(test.clicked, scores) > 0.63
    values, counts = np.unique(train.ids[:, C3], return_counts=True)
    seen = dict(zip(values.tolist(), counts.tolist(), strict=True))
    rare = np.array([seen.get(v, 0) < 5 for v in test.ids[:, C3].tolist()])
    assert rare.mean() > 0.3
    assert roc_auc(test.clicked[rare], scores[rare]) > 0.63


@pytest.mark.kafka
def test_the_cli_produces_the_same_impressions_to_kafka(
    kafka, topic_prefix, monkeypatch, tmp_path, capsys
) -> None:
    from streams.topics import ensure_topics, topic_name
    from tests.streams.helpers import read_topic

    monkeypatch.setenv("DRIFTLINE_BOOTSTRAP_SERVERS", kafka.bootstrap)
    ensure_topics(kafka.bootstrap)
    assert main(["ctr", "synth", "--rows", "400", "--seed", "5", "--topic", "impressions", "--quiet"]) == 0
    assert "produced 400 impressions" in capsys.readouterr().out
    produced = read_topic(kafka.bootstrap, topic_name("impressions"), 400)
    out = tmp_path / "same.jsonl"
    assert main(["ctr", "synth", "--rows", "400", "--seed", "5", "--out", str(out), "--quiet"]) == 0
    written = [parse_record(line, Impression) for line in out.read_bytes().splitlines()]
    assert sorted((parse_record(r, Impression) for r in produced), key=lambda r: r.ts) == written
