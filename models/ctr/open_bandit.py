"""The Open Bandit Dataset sample: real fashion-retailer (ZOZOTOWN) clicks as a stream of impressions.

The small-size sample of the Open Bandit Dataset (Saito et al., NeurIPS 2021 Datasets track; Apache-2.0)
ships inside the ``obp`` 0.5.7 source archive on PyPI (``obp/dataset/obd/``): two logging policies
(``random``, ``bts``) times three campaigns (``all``, ``men``, ``women``), 10,000 impressions each,
60,000 in all, logged over one week in November 2019, with about 0.4% clicked. The archive is fetched
once (sha256-checked) into the driftline cache, never into the repository.

Features per impression: categorical item id (per campaign), slot position, the four hashed user
features, the campaign, the three hashed item features; dense the item's numeric feature and the
logged user-item affinity of the shown item. The logging policy and its propensity are not features:
a CTR model predicts clicks for whatever is shown. With about 260 clicks in all, AUC on a held-out
tail carries a wide error bar: say so beside any figure.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from models.ctr.features import FeatureSpec
from streams.config import Settings
from streams.schemas import Impression

ARCHIVE_URL = (
    "https://files.pythonhosted.org/packages/5c/c8/"
    "3b511884a171091638d00a4255f11a635f33e0600094c255ec820f7a052f/obp-0.5.7.tar.gz"
)
ARCHIVE_SHA256 = "3060d67fedfcfadf1e7a6f2608987f74412b5eb74d2c567edeb147595c68f2a0"
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
ITEM_FEATURES = tuple(f"item_feature_{i}" for i in (1, 2, 3))

SPEC = FeatureSpec(
    categorical=("item_id", "position", "campaign", *USER_FEATURES, *ITEM_FEATURES),
    dense=("item_feature_0", "affinity"),
)


def _members() -> list[str]:
    """Paths inside the archive: each log file and its item context."""
    names = []
    for policy in POLICIES:
        for campaign in CAMPAIGNS:
            folder = f"obp-0.5.7/obp/dataset/obd/{policy}/{campaign}"
            names += [f"{folder}/{campaign}.csv", f"{folder}/item_context.csv"]
    return names


def _local_name(member: str) -> str:
    """``random-all-all.csv`` for ``.../obd/random/all/all.csv``: one flat folder in the cache."""
    policy, campaign, name = member.split("/")[-3:]
    return f"{policy}-{campaign}-{name}"


def fetch(cache: Path | None = None) -> Path:
    """Folder holding the twelve sample files; downloads and checks the obp source archive on first use."""
    target = (cache or Settings.from_env().cache / "open-bandit") / "obd-0.5.7"
    members = _members()
    if all((target / _local_name(m)).exists() for m in members):
        return target
    try:
        with urllib.request.urlopen(ARCHIVE_URL, timeout=60) as answer:
            archive = answer.read()
    except OSError as error:
        raise RuntimeError(f"could not download the obp 0.5.7 archive from PyPI: {error}") from error
    digest = hashlib.sha256(archive).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise RuntimeError(f"obp 0.5.7 archive has sha256 {digest}, expected {ARCHIVE_SHA256}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in members:
            source = tar.extractfile(member)
            if source is None:
                raise RuntimeError(f"obp 0.5.7 archive lacks {member}")
            partial = target / f".{_local_name(member)}.{os.getpid()}.part"  # own name: fetches may race
            partial.write_bytes(source.read())
            os.replace(partial, target / _local_name(member))
    return target


def _campaign_frame(folder: Path, policy: str, campaign: str) -> pd.DataFrame:
    """One log joined with its item context; the affinity column is the shown item's own."""
    log = pd.read_csv(folder / f"{policy}-{campaign}-{campaign}.csv", index_col=0)
    items = pd.read_csv(folder / f"{policy}-{campaign}-item_context.csv", index_col=0)
    frame = log.merge(items, on="item_id", how="left")
    affinity = frame[[f"user-item_affinity_{i}" for i in range(len(items))]].to_numpy()
    frame["affinity"] = affinity[range(len(frame)), frame["item_id"].to_numpy()]
    frame["campaign"] = campaign
    frame["policy"] = policy
    return frame


def clicks_frame(folder: Path | None = None) -> pd.DataFrame:
    """All six logs in time order (ties keep file order)."""
    folder = folder or fetch()
    frames = [_campaign_frame(folder, p, c) for p in POLICIES for c in CAMPAIGNS]
    frame = pd.concat(frames, ignore_index=True)
    frame["ts"] = (pd.to_datetime(frame["timestamp"]) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return frame.sort_values("ts", kind="mergesort").reset_index(drop=True)


def _impression(index: int, row: dict[str, object]) -> Impression:
    campaign = str(row["campaign"])
    categorical = {
        "item_id": f"{campaign}-{row['item_id']}",
        "position": str(row["position"]),
        "campaign": campaign,
        **{name: str(row[name]) for name in (*USER_FEATURES, *ITEM_FEATURES)},
    }
    dense = {"item_feature_0": float(row["item_feature_0"]), "affinity": float(row["affinity"])}  # type: ignore[arg-type]
    return Impression(
        id=f"obd-{row['policy']}-{index}",
        ts=float(row["ts"]),  # type: ignore[arg-type]
        categorical=categorical,
        dense=dense,
        clicked=int(row["click"]),  # type: ignore[call-overload]
    )


def iter_impressions(folder: Path | None = None) -> Iterator[Impression]:
    """The 60,000 logged impressions as :class:`Impression` records, in time order."""
    for index, row in enumerate(clicks_frame(folder).to_dict("records")):
        yield _impression(index, row)


def load_impressions(folder: Path | None = None) -> list[Impression]:
    """All 60,000 impressions in time order."""
    return list(iter_impressions(folder))
