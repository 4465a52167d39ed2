"""MovieLens-100K as a learning-to-rank set: users are queries, the movies they rated are documents.

Grades are ``rating - 1`` (0..4). Users are split once: a "history" share only supplies item statistics
(popularity, mean rating), the rest become queries. So no query's own ratings ever reach its features.
Per (user, movie) features: 19 genre flags, release year, log(1 + history ratings), history mean
rating (global mean when unrated), user age, gender, 21 occupation flags.

The files are RecBole's atomic files (``ml-100k.inter``, ``.item``, ``.user``, tab-separated with a
``name:type`` header), fetched and read by the CTR loader (:mod:`models.ctr.movielens`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.ctr.movielens import fetch, read_atomic  # one downloader and reader of the recbole files
from rankers.data import QueryBatch

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western", "unknown",
)  # fmt: skip


def ml100k_folder() -> Path:
    """The extracted ``ml-100k`` folder, fetched once into the cache by the CTR data loader."""
    return fetch()


def load_ml100k_ranking(folder: Path, history_fraction: float = 0.4, seed: int = 0) -> QueryBatch:
    """Queries (users outside the history share) with their rated movies as graded documents."""
    ratings = read_atomic(folder / "ml-100k.inter")
    items = read_atomic(folder / "ml-100k.item").set_index("item_id")
    users = read_atomic(folder / "ml-100k.user").set_index("user_id")
    ratings["rating"] = ratings["rating"].astype(float).astype(int)

    user_ids = np.array(sorted(ratings["user_id"].unique(), key=int))
    shuffled = np.random.default_rng(seed).permutation(user_ids)
    n_history = int(len(user_ids) * history_fraction)
    history_users = set(shuffled[:n_history].tolist())
    query_users = sorted(shuffled[n_history:].tolist(), key=int)

    history = ratings[ratings["user_id"].isin(history_users)]
    counts = history.groupby("item_id")["rating"].count()
    means = history.groupby("item_id")["rating"].mean()
    global_mean = float(history["rating"].mean())

    genre_flags = np.array(
        [[g in str(classes).split(" ") for g in GENRES] for classes in items["class"]], dtype=np.float32
    )
    years = pd.to_numeric(items["release_year"], errors="coerce").fillna(0).to_numpy(np.float32)
    item_features = np.column_stack(
        [
            genre_flags,
            years,
            np.log1p(counts.reindex(items.index).fillna(0).to_numpy(np.float32)),
            means.reindex(items.index).fillna(global_mean).to_numpy(np.float32),
        ]
    )
    item_row = {item_id: i for i, item_id in enumerate(items.index)}

    occupations = sorted(users["occupation"].unique())
    user_features = np.column_stack(
        [
            users["age"].astype(float).to_numpy(np.float32),
            (users["gender"] == "F").to_numpy(np.float32),
            np.array([[o == occ for occ in occupations] for o in users["occupation"]], dtype=np.float32),
        ]
    )
    user_row = {user_id: i for i, user_id in enumerate(users.index)}

    by_user = ratings[ratings["user_id"].isin(set(query_users))].groupby("user_id")
    features, grades = [], []
    for user in query_users:
        rated = by_user.get_group(user)
        docs = item_features[[item_row[i] for i in rated["item_id"]]]
        profile = np.broadcast_to(user_features[user_row[user]], (len(docs), user_features.shape[1]))
        features.append(np.hstack([docs, profile]))
        grades.append(rated["rating"].to_numpy() - 1)
    return QueryBatch.from_queries([f"user-{u}" for u in query_users], features, grades)
