"""MovieLens-100K loading: recbole files to time-ordered impressions, and the one-off wheel fetch."""

from __future__ import annotations

import itertools
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from models.ctr import movielens
from models.ctr.features import encode

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t5\t300\n2\t10\t3\t100\n1\t11\t4\t200\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tA Film\t1995\tAction Sci-Fi\n11\tB Film\t\tDrama\n"
)
USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n"
)


def write_files(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("inter", INTER), ("item", ITEM), ("user", USER)):
        (directory / f"ml-100k.{name}").write_text(text)
    return directory


def test_impressions_are_time_ordered_with_clicks_and_past_only_counts(tmp_path: Path) -> None:
    rows = movielens.load_impressions(write_files(tmp_path))
    assert [r.ts for r in rows] == [100.0, 200.0, 300.0]
    assert [r.clicked for r in rows] == [0, 1, 1]  # ratings 3, 4, 5
    first, second, third = rows
    assert first.categorical == {
        "user_id": "2", "item_id": "10", "age_bucket": "50-55", "gender": "F", "occupation": "other",
        "zip_prefix": "T8H", "decade": "1990s", "genres": "Action|Sci-Fi", "first_genre": "Action",
    }  # fmt: skip
    assert first.dense["age"] == 53.0 and first.dense["release_year"] == 1995.0
    assert "release_year" not in second.dense and "decade" not in second.categorical  # unknown year
    assert second.categorical["age_bucket"] == "18-24"
    assert third.dense["user_prior_ratings"] == pytest.approx(0.6931, abs=1e-4)  # log1p(1): one earlier
    assert third.dense["item_prior_ratings"] == pytest.approx(0.6931, abs=1e-4)
    assert first.dense["user_prior_ratings"] == 0.0
    assert encode(movielens.SPEC, rows).categorical.shape == (3, len(movielens.SPEC.categorical))


def test_fetch_extracts_from_the_downloaded_wheel_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_files(tmp_path / "source")
    calls: list[list[str]] = []

    def fake_pip(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        wheel = Path(command[command.index("-d") + 1]) / "recbole-1.2.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name in movielens.FILES:
                archive.write(source / f"ml-100k.{name}", movielens._MEMBER.format(name))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    directory = movielens.fetch(tmp_path / "cache")
    assert directory == tmp_path / "cache" / "ml-100k"
    assert (directory / "ml-100k.inter").read_text() == INTER
    assert "recbole==1.2.1" in calls[0] and "--no-deps" in calls[0]
    assert movielens.fetch(tmp_path / "cache") == directory
    assert len(calls) == 1  # cached


def test_failed_download_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "No matching distribution found")

    monkeypatch.setattr(movielens.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        movielens.fetch(tmp_path)


@pytest.mark.slow
def test_real_movielens_100k() -> None:
    rows = movielens.load_impressions()
    assert len(rows) == 100_000
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(rows))
    assert 0.5 < sum(r.clicked or 0 for r in rows) / len(rows) < 0.6
    assert len({r.categorical["user_id"] for r in rows}) == 943
