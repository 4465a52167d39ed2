"""The CTR service's side of the click join: records in, training batches out.

:class:`~models.ctr.click_join.ClickJoin` is pure arrays; this encodes unlabelled impressions with
the model's feature spec on the way in and hands the joined rows back as :class:`CtrBatch` es of the
service's batch size, so that a step never trains on a handful of rows (a batch of clicks alone
would be all positives).
"""

from __future__ import annotations

from typing import Any

import torch

from models.ctr.click_join import ClickJoin
from models.ctr.features import CtrBatch, FeatureSpec, encode
from streams.schemas import Click, Impression, Record


class ClickLabels:
    """Impressions without ``clicked`` and the clicks topic, joined into labelled batches."""

    def __init__(self, spec: FeatureSpec, window_s: float, batch_size: int) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.join = ClickJoin(window_s, len(spec.categorical), len(spec.dense))

    def impressions(self, records: list[Impression]) -> None:
        """Unlabelled impressions (features already checked against the spec) to wait for clicks."""
        if records:
            batch = encode(self.spec, records)
            self.join.add_impressions(
                [r.id for r in records],
                [r.ts for r in records],
                batch.categorical.numpy(),
                batch.dense.numpy(),
            )

    def clicks(self, records: list[Record]) -> None:
        clicks = [r for r in records if isinstance(r, Click)]
        self.join.add_clicks([c.impression_id for c in clicks], [c.ts for c in clicks])

    def batches(self) -> list[CtrBatch]:
        """The joined rows ready for training, in full batches."""
        return [
            CtrBatch(
                torch.from_numpy(rows.categorical.astype("int64")),
                torch.from_numpy(rows.dense),
                torch.from_numpy(rows.labels.astype("float32")),
            )
            for rows in self.join.take(self.batch_size)
        ]

    def metrics(self) -> dict[str, float]:
        return self.join.gauges()

    def state_dict(self) -> dict[str, Any]:
        return self.join.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the join; None (a state saved without a click window) starts it empty."""
        if state is None:
            join = self.join
            self.join = ClickJoin(join.window_s, len(self.spec.categorical), len(self.spec.dense))
        else:
            self.join.load_state_dict(state)
