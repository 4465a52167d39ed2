"""The Open Bandit Dataset loader: checked archive, flat cache, the shown item's affinity, time order."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from models.ctr import open_bandit
from models.ctr.features import encode

ITEMS = (
    ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n0,0,0.5,a,b,c\n1,1,-1.5,d,e,f\n"
)


def _log(campaign: str) -> str:
    """Two impressions of a two-item campaign; the second shows item 1, whose affinity is 2.0."""
    header = ",timestamp,item_id,position,click,propensity_score," + ",".join(open_bandit.USER_FEATURES)
    header += ",user-item_affinity_0,user-item_affinity_1\n"
    return (
        header
        + "0,2019-11-24 00:00:02+00:00,0,1,0,0.5,u0,u1,u2,u3,0.25,0.0\n"
        + f"1,2019-11-24 00:00:01+00:00,1,3,1,0.5,u0,u1,{campaign},u3,0.0,2.0\n"
    )


def _archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in open_bandit._members():
            campaign = member.split("/")[-2]
            text = ITEMS if member.endswith("item_context.csv") else _log(campaign)
            info = tarfile.TarInfo(member)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


class _Answer(io.BytesIO):
    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def test_fetch_checks_the_archive_and_caches_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _archive()
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> _Answer:
        calls.append(url)
        return _Answer(archive)

    monkeypatch.setattr(open_bandit, "ARCHIVE_SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.setattr(open_bandit.urllib.request, "urlopen", fake_urlopen)
    folder = open_bandit.fetch(tmp_path)
    assert open_bandit.fetch(tmp_path) == folder and len(calls) == 1  # cached after the first call
    impressions = open_bandit.load_impressions(folder)
    assert len(impressions) == 12  # 2 policies x 3 campaigns x 2 rows
    assert [i.ts for i in impressions] == sorted(i.ts for i in impressions)
    shown = next(i for i in impressions if i.clicked == 1)
    assert shown.dense == {"item_feature_0": -1.5, "affinity": 2.0}
    assert shown.categorical["item_id"] == f"{shown.categorical['campaign']}-1"
    assert shown.categorical["position"] == "3"
    batch = encode(open_bandit.SPEC, impressions, [int(i.clicked or 0) for i in impressions])
    assert len(batch) == 12


def test_a_tampered_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(open_bandit.urllib.request, "urlopen", lambda url, timeout: _Answer(_archive()))
    with pytest.raises(RuntimeError, match="sha256"):
        open_bandit.fetch(tmp_path)
    assert not list(tmp_path.rglob("*.csv"))


@pytest.mark.slow
def test_the_real_sample() -> None:
    impressions = open_bandit.load_impressions()
    assert len(impressions) == 60_000
    assert sum(int(i.clicked or 0) for i in impressions) == 287
    assert [i.ts for i in impressions] == sorted(i.ts for i in impressions)
