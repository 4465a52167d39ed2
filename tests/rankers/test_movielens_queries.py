"""The readable MovieLens query stream: display fields from the profile, features that never see the
candidates' own ratings, true grades = rating - 1 (synthetic MovieLens-layout files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankers.movielens_queries import FEATURES, movielens_queries

ITEMS = {  # id: (title, year, genres)
    "1": ("Star Wars", "1977", "Action Sci-Fi"),
    "2": ("Fargo", "1996", "Crime Drama"),
    "3": ("Alien", "1979", "Horror Sci-Fi"),
    "4": ("Babe", "1995", "Children's Comedy"),
    "5": ("Heat", "1995", "Action Crime"),
    "6": ("<script>x</script>", "1990", "Drama"),
}
USERS = {"10": ("24", "M", "technician"), "11": ("53", "F", "writer"), "12": ("30", "F", "artist")}


def write_ml(folder: Path, ratings: list[tuple[str, str, int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ratings]
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{i}\t{t}\t{y}\t{g}" for i, (t, y, g) in ITEMS.items()]
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{u}\t{a}\t{g}\t{o}\t00000" for u, (a, g, o) in USERS.items()]
    for name, lines in (("inter", inter), ("item", items), ("user", users)):
        (folder / f"ml-100k.{name}").write_text("\n".join(lines) + "\n")
    return folder


#: Each user rates every movie; user 10's profile (earlier half) loves sci-fi, hates drama.
RATINGS = [
    (user, item, rating, start + t)
    for user, start, rated in (
        ("10", 0, (("1", 5), ("3", 5), ("2", 1), ("4", 3), ("5", 4), ("6", 2))),
        ("11", 10, (("2", 4), ("6", 5), ("1", 2), ("3", 3), ("4", 4), ("5", 1))),
        ("12", 20, (("4", 5), ("5", 3), ("1", 4), ("2", 2), ("3", 4), ("6", 3))),
    )
    for t, (item, rating) in enumerate(rated)
]


def load(tmp_path: Path, ratings: list[tuple[str, str, int, int]] = RATINGS, **kw: float):
    return movielens_queries(write_ml(tmp_path / "ml", ratings), history_fraction=1 / 3, **kw)


def test_queries_show_the_profile_and_readable_candidates_graded_by_the_real_rating(tmp_path: Path) -> None:
    queries, truth = load(tmp_path)
    assert len(queries) == 2  # one of the three users only supplies movie statistics
    for query in queries:
        user = query.query_id.removeprefix("user-")
        later = sorted((t, i, r) for u, i, r, t in RATINGS if u == user)[3:]  # the later half
        assert truth[query.query_id] == {f"m{i}": r - 1 for _, i, r in later}
        age, gender, occupation = USERS[user]
        assert query.text is not None and query.text.endswith(f"{age}, {gender}, {occupation}")
        assert len(query.documents[0].features) == len(FEATURES)
        for doc in query.documents:
            title, year, genres = ITEMS[doc.doc_id.removeprefix("m")]
            assert doc.title == f"{title} ({year})"
            assert doc.snippet is not None and doc.snippet.startswith(" · ".join(genres.split(" ")))
            assert doc.url is not None and doc.url.startswith("https://www.imdb.com/find/?q=")
    assert [q.ts for q in queries] == [0.0, 1.0]  # in the time order of the profiles


def test_user_10_profile_text_and_genre_features(tmp_path: Path) -> None:
    queries, _ = load(tmp_path)
    [query] = [q for q in queries if q.query_id == "user-10"]  # seed 0 draws user 11 as history
    assert query.text is not None
    assert query.text.startswith("Likes: Alien (1979), Star Wars (1977) · Dislikes: Fargo (1996)")
    features = {d.doc_id: dict(zip(FEATURES, d.features, strict=True)) for d in query.documents}
    # liked: best first, the latest first on ties. Profile ratings 5, 5, 1 (mean 11/3): Heat shares
    # Action with Star Wars (+4/3) and Crime with Fargo (-8/3); "<script>" (Drama) shares only
    # with Fargo; Babe shares nothing
    assert features["m5"]["genre_affinity"] == pytest.approx((4 / 3 - 8 / 3) / 2)
    assert features["m6"]["genre_affinity"] == pytest.approx(-8 / 3)
    assert features["m4"]["genre_affinity"] == 0.0 and features["m4"]["genre_overlap"] == 0.0
    assert features["m5"]["year_gap"] == pytest.approx(1995 - 1979)
    assert features["m5"]["user_mean"] == pytest.approx(11 / 3)


def test_no_candidate_rating_reaches_the_features(tmp_path: Path) -> None:
    queries, truth = load(tmp_path / "a")
    asked = {q.query_id.removeprefix("user-") for q in queries}
    # the query users' later halves (the candidates) rated the other way round; history untouched
    changed = [(u, i, 6 - r if u in asked and t % 10 >= 3 else r, t) for u, i, r, t in RATINGS]
    again, truth_again = load(tmp_path / "b", changed)
    assert [q.query_id for q in again] == [q.query_id for q in queries]
    for before, after in zip(queries, again, strict=True):
        np.testing.assert_array_equal(
            [d.features for d in before.documents], [d.features for d in after.documents]
        )
        assert before.text == after.text
    assert truth_again != truth  # the grades did follow the ratings


def test_docs_per_query_bounds_the_candidates(tmp_path: Path) -> None:
    queries, _ = load(tmp_path, docs_per_query=2)
    assert {len(q.documents) for q in queries} == {2}
    with pytest.raises(ValueError, match="docs_per_query"):
        load(tmp_path, docs_per_query=0)


def test_the_main_job_replays_these_readable_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.ctr import movielens
    from roles.main_job import REPLAYS

    monkeypatch.setattr(movielens, "fetch", lambda: write_ml(tmp_path / "ml", RATINGS))
    [replay] = REPLAYS["rank"](tmp_path)
    queries = list(replay.records)
    assert replay.topic == "queries" and replay.total == len(queries) == 2
    assert all(q.text and q.documents[0].title for q in queries)
