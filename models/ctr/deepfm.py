"""DeepFM (Guo et al., 2017): first-order weights + factorisation machine + DNN over shared embeddings."""

from __future__ import annotations

import torch
from torch import nn

from models.ctr.features import FeatureSpec
from models.ctr.layers import FieldEmbedding, mlp
from models.ctr.learner import CtrConfig, CtrLearner, CtrNet


class DeepFMNet(CtrNet):
    """logit = bias + sum of first-order weights + FM pairwise term + DNN([embeddings, dense]).

    Dense features enter the first-order part through a linear layer and the DNN as extra inputs.
    """

    def __init__(self, spec: FeatureSpec, config: CtrConfig) -> None:
        super().__init__()
        fields, dense = len(spec.categorical), len(spec.dense)
        self.embedding = FieldEmbedding(fields, spec.buckets, config.embed_dim, config.init_std)
        self.first_order = FieldEmbedding(fields, spec.buckets, 1, config.init_std)
        self.dense_linear = nn.Linear(dense, 1)
        self.dnn = mlp(fields * config.embed_dim + dense, config.hidden)
        self.dnn_out = nn.Linear(config.hidden[-1], 1)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(categorical)  # [B, F, d]
        first = self.first_order(categorical).sum(dim=(1, 2)) + self.dense_linear(dense).squeeze(1)
        pairwise = 0.5 * (embedded.sum(1).pow(2) - embedded.pow(2).sum(1)).sum(1)
        deep = self.dnn_out(self.dnn(torch.cat([embedded.flatten(1), dense], dim=1))).squeeze(1)
        return first + pairwise + deep


class DeepFM(CtrLearner):
    """DeepFM as an online :class:`~models.contract.Learner`."""

    name = "deepfm"

    def build_net(self) -> CtrNet:
        return DeepFMNet(self.spec, self.config)
