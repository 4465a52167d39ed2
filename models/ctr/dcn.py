"""DCN-v2 (Wang et al., 2021), parallel form: full-rank cross network and DNN side by side."""

from __future__ import annotations

import torch
from torch import nn

from models.ctr.features import FeatureSpec
from models.ctr.layers import FieldEmbedding, mlp
from models.ctr.learner import CtrConfig, CtrLearner, CtrNet


class CrossNetV2(nn.Module):
    """``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``: explicit feature crosses of growing order."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class DCNv2Net(CtrNet):
    """logit = Linear([cross(x0), DNN(x0)]) with x0 = [flattened embeddings, dense]."""

    def __init__(self, spec: FeatureSpec, config: CtrConfig, cross_layers: int = 3) -> None:
        super().__init__()
        fields = len(spec.categorical)
        width = fields * config.embed_dim + len(spec.dense)
        self.embedding = FieldEmbedding(fields, spec.buckets, config.embed_dim, config.init_std)
        self.cross = CrossNetV2(width, cross_layers)
        self.dnn = mlp(width, config.hidden)
        self.out = nn.Linear(width + config.hidden[-1], 1)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([self.embedding(categorical).flatten(1), dense], dim=1)
        return self.out(torch.cat([self.cross(x0), self.dnn(x0)], dim=1)).squeeze(1)


class DCNv2(CtrLearner):
    """DCN-v2 as an online :class:`~models.contract.Learner`."""

    name = "dcn"

    def build_net(self) -> CtrNet:
        return DCNv2Net(self.spec, self.config)
