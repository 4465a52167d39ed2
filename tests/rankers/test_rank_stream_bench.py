"""The stream bench's raw-run merge: seed ranges and selectors run apart still compare pairwise."""

from __future__ import annotations

import json
from pathlib import Path

from bench.rank_stream import load_raw


def runs(seeds: range, value: float) -> list[dict]:
    return [{"seed": s, "points": {"50": {"dcg@4": value + s}}} for s in seeds]


def test_merged_files_keep_each_selectors_first_run_per_seed_and_only_common_seeds(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"stream": {"random": runs(range(3), 1.0), "re+pv": runs(range(3), 2.0)}}))
    # a later call adds a selector to seeds 0-2 (random again, a duplicate) and runs seed 3 without it
    second.write_text(json.dumps({"stream": {"random": runs(range(4), 9.0), "re": runs(range(3), 5.0)}}))
    merged = load_raw([first, second])["stream"]
    assert {name: [r["seed"] for r in rs] for name, rs in merged.items()} == {
        "random": [0, 1, 2], "re+pv": [0, 1, 2], "re": [0, 1, 2]  # seed 3 lacks re+pv and re: left out
    }  # fmt: skip
    assert [r["points"][50]["dcg@4"] for r in merged["random"]] == [1.0, 2.0, 3.0]  # the first file's
