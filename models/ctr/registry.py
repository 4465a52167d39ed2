"""CTR learners by name, for the service, the CLI and the benchmark."""

from __future__ import annotations

from models.ctr.dcn import DCNv2
from models.ctr.deepfm import DeepFM
from models.ctr.learner import CtrLearner

LEARNERS: dict[str, type[CtrLearner]] = {DeepFM.name: DeepFM, DCNv2.name: DCNv2}


def learner_class(kind: str) -> type[CtrLearner]:
    """The learner called ``kind`` (``deepfm`` or ``dcn``)."""
    if kind not in LEARNERS:
        raise ValueError(f"unknown CTR model {kind!r}; known: {', '.join(LEARNERS)}")
    return LEARNERS[kind]
