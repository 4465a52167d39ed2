"""MovieLens-100K as a time-ordered stream of impressions (rating >= 4 counts as a click).

The data ships inside the recbole 1.2.1 wheel on PyPI (``recbole/dataset_example/ml-100k/``). It is
fetched once with ``pip download --no-deps`` into the driftline cache (``$DRIFTLINE_CACHE``, default
``~/.cache/driftline``), never into the repository.

Features per rating: categorical user id, item id, age bucket, gender, occupation, zip prefix,
release decade, genre set and first genre; dense age, release year and how many ratings the user and
the item had before this one (log1p, counted in time order, so only the past is used).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from models.ctr.features import FeatureSpec
from streams.config import Settings
from streams.schemas import Impression

RECBOLE = "recbole==1.2.1"
_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
FILES = ("inter", "item", "user")

SPEC = FeatureSpec(
    categorical=(
        "user_id",
        "item_id",
        "age_bucket",
        "gender",
        "occupation",
        "zip_prefix",
        "decade",
        "genres",
        "first_genre",
    ),
    dense=("age", "release_year", "user_prior_ratings", "item_prior_ratings"),
)

_AGE_EDGES = (18, 25, 35, 45, 50, 56)


def default_cache() -> Path:
    """Where downloaded data sets live: the driftline cache, shared by every checkout."""
    return Settings.from_env().cache / "movielens"


def fetch(cache: Path | None = None) -> Path:
    """Directory holding ``ml-100k.{inter,item,user}``; downloads the recbole wheel on first use."""
    target = (cache or default_cache()) / "ml-100k"
    if all((target / f"ml-100k.{name}").exists() for name in FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RECBOLE, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {RECBOLE} from PyPI: {done.stderr.strip()[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in FILES:
                partial = target / f".ml-100k.{name}.{os.getpid()}.part"  # own name: fetches may race
                partial.write_bytes(wheel.read(_MEMBER.format(name)))
                os.replace(partial, target / f"ml-100k.{name}")
    return target


def read_atomic(path: Path) -> pd.DataFrame:
    """A recbole atomic file: tab-separated, headers like ``user_id:token``."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    return frame


def _age_bucket(age: int) -> str:
    """MovieLens-1M style age ranges: 0-17, 18-24, 25-34, 35-44, 45-49, 50-55, 56+."""
    lower = 0
    for edge in _AGE_EDGES:
        if age < edge:
            return f"{lower}-{edge - 1}"
        lower = edge
    return f"{lower}+"


def ratings_frame(directory: Path) -> pd.DataFrame:
    """Ratings joined with user and item attributes, in time order (ties keep file order)."""
    ratings = read_atomic(directory / "ml-100k.inter")
    users = read_atomic(directory / "ml-100k.user")
    items = read_atomic(directory / "ml-100k.item")
    frame = ratings.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    frame["timestamp"] = frame["timestamp"].astype(float)
    frame = frame.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    frame["clicked"] = (frame["rating"].astype(float) >= 4).astype(int)
    frame["user_prior_ratings"] = np.log1p(frame.groupby("user_id").cumcount())
    frame["item_prior_ratings"] = np.log1p(frame.groupby("item_id").cumcount())
    return frame


def _impression(row: dict[str, str | float | int]) -> Impression:
    age = int(row["age"])
    year = str(row["release_year"])
    genres = str(row["class"]).split()
    categorical = {
        "user_id": str(row["user_id"]),
        "item_id": str(row["item_id"]),
        "age_bucket": _age_bucket(age),
        "gender": str(row["gender"]),
        "occupation": str(row["occupation"]),
        "zip_prefix": str(row["zip_code"])[:3].upper(),
    }
    dense = {
        "age": float(age),
        "user_prior_ratings": float(row["user_prior_ratings"]),
        "item_prior_ratings": float(row["item_prior_ratings"]),
    }
    if year.isdigit():
        categorical["decade"] = f"{year[:3]}0s"
        dense["release_year"] = float(year)
    if genres:
        categorical["genres"] = "|".join(genres)
        categorical["first_genre"] = genres[0]
    return Impression(
        id=f"ml100k-u{row['user_id']}-i{row['item_id']}",
        ts=float(row["timestamp"]),
        categorical=categorical,
        dense=dense,
        clicked=int(row["clicked"]),
    )


def iter_impressions(directory: Path | None = None) -> Iterator[Impression]:
    """MovieLens-100K ratings as :class:`Impression` records in time order (for replay into Kafka)."""
    frame = ratings_frame(directory or fetch())
    for row in frame.to_dict("records"):
        yield _impression(row)


def load_impressions(directory: Path | None = None) -> list[Impression]:
    """All 100,000 impressions in time order."""
    return list(iter_impressions(directory))
