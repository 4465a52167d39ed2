from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from rankers.data import LetorFormatError, QueryBatch, load_letor, mslr_path
from rankers.records import query_records


def test_letor_reader_groups_queries_and_places_sparse_features(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("2 qid:7 1:0.5 3:2 # doc a\n0 qid:7 2:1\n\n4 qid:9 1:1 2:1 3:1\n")
    batch = load_letor(path)
    assert batch.query_ids == ("7", "9")
    assert batch.offsets.tolist() == [0, 2, 3]
    assert batch.grades.tolist() == [2, 0, 4]
    assert batch.features.tolist() == [[0.5, 0, 2], [0, 1, 0], [1, 1, 1]]


def test_letor_reader_reads_gzip_files_as_they_ship(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("2 qid:7 1:0.5 3:2\n0 qid:7 2:1\n4 qid:9 1:1 2:1 3:1\n")
    batch = load_letor(path)
    assert batch.query_ids == ("7", "9")
    assert batch.features.tolist() == [[0.5, 0, 2], [0, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("5 qid:1 1:1\n", "grade 5"),
        ("1 1:1\n", "qid"),
        ("1 qid:1 0:1\n", "start at 1"),
        ("1 qid:1 1:x\n", ":1"),
        ("1 qid:1 1:1\n1 qid:2 1:1\n1 qid:1 1:1\n", "not contiguous"),
    ],
)
def test_letor_reader_names_the_bad_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(LetorFormatError, match=reason):
        load_letor(path)


def test_batch_select_and_concat_round_trip(queries: QueryBatch) -> None:
    picked = queries.select([3, 0])
    assert picked.query_ids == ("q3", "q0")
    assert np.array_equal(
        picked.split_scores(picked.features.T)[0].T, queries.split_scores(queries.features.T)[3].T
    )
    joined = QueryBatch.concat([queries.select([0, 1]), queries.select([2])])
    assert joined.query_ids == ("q0", "q1", "q2")
    assert np.array_equal(joined.grades, queries.grades[: queries.offsets[3]])


def test_batch_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValueError, match="offsets"):
        QueryBatch(np.zeros((3, 2), np.float32), np.array([0, 2]), ("a",))
    with pytest.raises(ValueError, match="grades must lie"):
        QueryBatch(np.zeros((2, 2), np.float32), np.array([0, 2]), ("a",), np.array([0, 5]))


@pytest.mark.skipif(not mslr_path().exists(), reason="shared MSLR slice not present")
def test_mslr_slice_has_the_documented_shape() -> None:
    batch = load_letor(mslr_path(), 136)
    assert (batch.n_queries, *batch.features.shape) == (43, 5000, 136)
    assert set(np.unique(batch.grades)) == {0, 1, 2, 3, 4}


def test_letor_file_becomes_query_records_with_true_grades(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("2 qid:7 1:0.5 3:2\n0 qid:7 2:1\n4 qid:9 1:1 2:1 3:1\n")
    (first, second), truth = query_records(load_letor(path), ts0=10.0)
    assert (first.query_id, [d.doc_id for d in first.documents]) == ("7", ["7-d0", "7-d1"])
    assert second.documents[0].features == [1.0, 1.0, 1.0] and second.ts == 11.0
    assert truth == {"7": {"7-d0": 2, "7-d1": 0}, "9": {"9-d0": 4}}
