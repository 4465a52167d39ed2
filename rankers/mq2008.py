"""LETOR 4.0 MQ2008 from the shared data folder: the five gzip subsets S1-S5 as one QueryBatch.

The subsets are disjoint (each is one fold's test file), so together they are the whole data set:
784 queries, 46 features, grades 0-2, read by :func:`rankers.data.load_letor` as they are.
"""

from __future__ import annotations

from pathlib import Path

from rankers.data import QueryBatch, load_letor
from streams.config import shared_data_dir

MQ2008_FEATURES = 46
SUBSETS = ("S1", "S2", "S3", "S4", "S5")


def mq2008_folder() -> Path:
    return shared_data_dir() / "ltr" / "MQ2008"


def load_mq2008(folder: Path | None = None) -> QueryBatch:
    """Every query of S1-S5, in file order; FileNotFoundError names a missing subset."""
    folder = mq2008_folder() if folder is None else folder
    parts = []
    for subset in SUBSETS:
        path = folder / f"{subset}.txt.gz"
        if not path.is_file():
            raise FileNotFoundError(f"MQ2008 subset missing: {path} (see shared/data/README)")
        parts.append(load_letor(path, MQ2008_FEATURES))
    return QueryBatch.concat(parts)
