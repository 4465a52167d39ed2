"""MovieLens-100K as a query stream a person can judge: what ``make run`` replays onto ``queries``.

Each query is one user; its documents are movies the user rated later, and the question an annotator
answers is "how much would this user like it" (0-4, the real rating minus one is the true grade).

- Users are split once (seeded): a "history" share only supplies movie statistics (popularity, mean
  rating); the others become queries, in the time order of their profile's last rating.
- A query user's ratings are cut in time: the earlier half is the **profile** (what the annotator
  reads as the query text: liked and disliked movies, age, occupation); ``docs_per_query`` movies
  sampled from the later half are the **candidates**. No candidate's rating reaches any feature.
- Display fields (title "Toy Story (1995)", a snippet with genres and the history's mean rating, an
  IMDb search link) are for people; the model reads only :data:`FEATURES`, numbers computed from the
  profile and the history users:

``genre_affinity``
    the user's mean centred profile rating (rating minus their own mean) over the profile movies
    sharing a genre with the candidate: above 0 when they rate such movies above their average.
``genre_overlap``
    cosine between the candidate's genre flags and the profile's genre counts.
``log_popularity``
    log(1 + how many history users rated the movie).
``mean_rating``
    the history users' mean rating, shrunk towards the global mean by ``PRIOR`` pseudo-ratings.
``release_year``, ``year_gap``
    the year, and its distance from the median year of the user's profile movies.
``user_mean``, ``log_profile``
    the user's mean profile rating and log(1 + profile size): the same for every candidate of a
    query, they let the trees calibrate grades per user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import numpy as np
import pandas as pd

from models.ctr.movielens import read_atomic
from rankers.movielens import GENRES
from streams.schemas import Document, Query

FEATURES = (
    "genre_affinity", "genre_overlap", "log_popularity", "mean_rating",
    "release_year", "year_gap", "user_mean", "log_profile",
)  # fmt: skip
#: Pseudo-ratings at the global mean added to each movie's history mean (rarely rated movies).
PRIOR = 5.0
LIKES, DISLIKES = 5, 2


@dataclass(frozen=True)
class Movies:
    """Per movie (indexed by item id): display text, genre flags and the history users' statistics."""

    title: pd.Series
    year: pd.Series
    genres: pd.DataFrame
    count: pd.Series
    mean: pd.Series


def _movies(items: pd.DataFrame, history: pd.DataFrame) -> Movies:
    classes = items["class"].astype(str).str.split(" ")
    genres = pd.DataFrame(
        [[g in c for g in GENRES] for c in classes], index=items.index, columns=GENRES, dtype=float
    )
    counts = history.groupby("item_id")["rating"].count().reindex(items.index).fillna(0.0)
    sums = history.groupby("item_id")["rating"].sum().reindex(items.index).fillna(0.0)
    global_mean = float(history["rating"].mean())
    mean = (sums + PRIOR * global_mean) / (counts + PRIOR)
    year = pd.to_numeric(items["release_year"], errors="coerce")
    return Movies(items["movie_title"].astype(str), year, genres, counts, mean)


def _label(movies: Movies, item: str) -> str:
    year = movies.year[item]
    return movies.title[item] if np.isnan(year) else f"{movies.title[item]} ({int(year)})"


def _profile_text(movies: Movies, profile: pd.DataFrame, user: pd.Series) -> str:
    """ "Likes: A (1977), B (1996) · Dislikes: C · 24, M, technician" from the profile's ratings."""
    ranked = profile.sort_values(["rating", "timestamp"], ascending=[False, False], kind="mergesort")
    liked = [_label(movies, i) for i in ranked[ranked["rating"] >= 4]["item_id"].head(LIKES)]
    disliked = [_label(movies, i) for i in ranked[ranked["rating"] <= 2]["item_id"].tail(DISLIKES)]
    parts = [f"Likes: {', '.join(liked) or 'nothing rated 4+ yet'}"]
    if disliked:
        parts.append(f"Dislikes: {', '.join(disliked)}")
    parts.append(f"{user['age']}, {user['gender']}, {user['occupation']}")
    return " · ".join(parts)


def _document(movies: Movies, item: str, features: np.ndarray) -> Document:
    genres = [g for g in GENRES if movies.genres.at[item, g]]
    seen = int(movies.count[item])
    rated = f"rated {movies.mean[item]:.1f}/5 by {seen} viewers" if seen else "no ratings yet"
    label = _label(movies, item)
    return Document(
        doc_id=f"m{item}", features=features.tolist(), title=label,
        snippet=f"{' · '.join(genres)} — {rated}",
        url=f"https://www.imdb.com/find/?q={quote_plus(label)}",
    )  # fmt: skip


def _features(movies: Movies, profile: pd.DataFrame, candidates: list[str]) -> np.ndarray:
    """:data:`FEATURES` of each candidate for the user whose profile ratings are ``profile``."""
    ratings = profile["rating"].to_numpy(float)
    flags = movies.genres.loc[profile["item_id"]].to_numpy()  # profile movies x genres
    centred = ratings - ratings.mean()
    cand = movies.genres.loc[candidates].to_numpy()  # candidates x genres
    shares = cand @ flags.T > 0  # candidate shares a genre with that profile movie
    n_shared = shares.sum(axis=1)
    affinity = np.where(n_shared > 0, (shares @ centred) / np.maximum(n_shared, 1), 0.0)
    taste = flags.sum(axis=0)
    norms = np.linalg.norm(cand, axis=1) * np.linalg.norm(taste)
    overlap = np.where(norms > 0, cand @ taste / np.where(norms > 0, norms, 1.0), 0.0)
    years = movies.year[candidates].to_numpy(float)
    profile_year = float(np.nanmedian(movies.year[profile["item_id"]].to_numpy(float)))
    years = np.where(np.isnan(years), profile_year, years)
    n = len(candidates)
    return np.column_stack(
        [
            affinity, overlap,
            np.log1p(movies.count[candidates].to_numpy(float)), movies.mean[candidates].to_numpy(float),
            years, np.abs(years - profile_year),
            np.full(n, ratings.mean()), np.full(n, np.log1p(len(ratings))),
        ]
    )  # fmt: skip


def movielens_queries(
    folder: Path, docs_per_query: int = 8, history_fraction: float = 0.4, seed: int = 0, ts0: float = 0.0
) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """Query records (``user-<id>``, ts ``ts0 + i``) and each query's true grades by doc id."""
    if docs_per_query < 1:
        raise ValueError("docs_per_query must be >= 1")
    ratings = read_atomic(folder / "ml-100k.inter")
    ratings["rating"] = ratings["rating"].astype(float).astype(int)
    ratings["timestamp"] = ratings["timestamp"].astype(float)
    items = read_atomic(folder / "ml-100k.item").set_index("item_id")
    users = read_atomic(folder / "ml-100k.user").set_index("user_id")

    rng = np.random.default_rng(seed)
    user_ids = rng.permutation(np.array(sorted(ratings["user_id"].unique(), key=int)))
    n_history = int(len(user_ids) * history_fraction)
    history = ratings[ratings["user_id"].isin(set(user_ids[:n_history].tolist()))]
    movies = _movies(items, history)

    cut: list[tuple[float, str, pd.DataFrame, list[str], list[int]]] = []
    by_user = ratings[~ratings["user_id"].isin(set(user_ids[:n_history].tolist()))].groupby("user_id")
    for user, rated in by_user:
        rated = rated.sort_values("timestamp", kind="mergesort")
        half = len(rated) // 2
        profile, later = rated.iloc[:half], rated.iloc[half:]
        pick = np.sort(rng.choice(len(later), size=min(docs_per_query, len(later)), replace=False))
        chosen = later.iloc[pick]
        cut.append((float(profile["timestamp"].iloc[-1]), str(user), profile,
                    chosen["item_id"].tolist(), (chosen["rating"] - 1).tolist()))  # fmt: skip
    cut.sort(key=lambda c: (c[0], int(c[1])))

    queries: list[Query] = []
    truth: dict[str, dict[str, int]] = {}
    for i, (_, user, profile, candidates, grades) in enumerate(cut):
        features = _features(movies, profile, candidates)
        docs = [_document(movies, item, row) for item, row in zip(candidates, features, strict=True)]
        qid = f"user-{user}"
        text = _profile_text(movies, profile, users.loc[user])
        queries.append(Query(query_id=qid, ts=ts0 + i, documents=docs, text=text))
        truth[qid] = {d.doc_id: g for d, g in zip(docs, grades, strict=True)}
    return queries, truth
