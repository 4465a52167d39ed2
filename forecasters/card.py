"""CARD (Channel Aligned Robust Blend Transformer, ICLR 2024), re-implemented small for CPU.

Per-channel instance norm; the window is cut into patches (unfold) with a CLS token in front. Each
block attends over channels at every token, then over tokens within every channel; both attentions
use EMA-smoothed queries/keys, add a dual attention "over hidden" (d_h x d_h), and blend adjacent
tokens of a head (token blend). Channel attention first reduces keys/values to ``rank`` rows with a
learned softmax projection, so its cost is linear in the channel count. Trained with the
signal-decay robust loss (1/sqrt(i)-weighted L1 over the horizon).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from forecasters.learner import NetForecaster


@dataclass(frozen=True)
class CARDConfig:
    """Defaults are the paper's ETT settings (d_model 16, 2 heads, d_ff 32, 2 layers)."""

    seq_len: int = 96
    horizon: int = 24
    patch_len: int = 16
    stride: int = 8
    d_model: int = 16
    n_heads: int = 2
    d_ff: int = 32
    layers: int = 2
    dropout: float = 0.3
    alpha: float = 0.5
    rank: int = 8
    merge: int = 2

    @property
    def tokens(self) -> int:
        """Patches after padding the end by one stride, plus the CLS token."""
        return (self.seq_len + self.stride - self.patch_len) // self.stride + 2


def ema_matrix(n: int, alpha: float) -> torch.Tensor:
    """M with (M @ x)_i = s_i where s_0 = x_0 and s_i = alpha * x_i + (1 - alpha) * s_{i-1}."""
    i = torch.arange(n, dtype=torch.float32)[:, None]
    j = torch.arange(n, dtype=torch.float32)[None, :]
    weights = alpha * (1 - alpha) ** (i - j)
    weights[:, 0] = (1 - alpha) ** i[:, 0]
    return torch.where(j <= i, weights, torch.zeros(()))


def signal_decay_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CARD's robust loss: L1 with horizon step i (1-based) weighted by 1/sqrt(i)."""
    steps = torch.arange(1, prediction.shape[1] + 1, device=prediction.device, dtype=prediction.dtype)
    weight = steps.rsqrt()[None, :, None]
    return F.l1_loss(prediction * weight, target * weight)


def token_blend(heads_out: torch.Tensor, merge: int) -> torch.Tensor:
    """[N, heads, T, d_h] -> [N, T, heads * d_h], merging ``merge`` adjacent tokens of the same head.

    Groups of ``merge`` heads are laid end to end along the token axis and re-cut into T tokens of
    ``merge`` consecutive entries, so the first half of the new tokens each hold two neighbouring
    tokens of one head and the second half those of the next head (CARD's rearrange).
    """
    n, heads, tokens, d_head = heads_out.shape
    grouped = heads_out.reshape(n, heads // merge, tokens, merge, d_head)
    return grouped.permute(0, 2, 3, 1, 4).reshape(n, tokens, heads * d_head)


def _batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the feature (last) axis of [..., T, d]."""
    shape = x.shape
    flat = x.reshape(-1, shape[-2], shape[-1]).transpose(1, 2)
    return norm(flat).transpose(1, 2).reshape(shape)


class DualAttention(nn.Module):
    """Attention along the sequence axis of [B, S, T, d] (S independent rows) plus attention over hidden.

    With ``rank`` set, keys/values along T are first reduced to ``rank`` rows by a learned softmax
    projection over T (used for channel attention, where T is the channel axis).
    """

    def __init__(self, cfg: CARDConfig, rank: int | None = None) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.merge:
            raise ValueError("d_model must divide by n_heads and n_heads by merge")
        self.heads = cfg.n_heads
        self.d_head = cfg.d_model // cfg.n_heads
        self.alpha = cfg.alpha
        self.merge = cfg.merge
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.reduce_k = nn.Linear(self.d_head, rank) if rank else None
        self.reduce_v = nn.Linear(self.d_head, rank) if rank else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm_seq = nn.BatchNorm1d(cfg.d_model)
        self.norm_hidden = nn.BatchNorm1d(cfg.d_model)
        self.norm_out = nn.BatchNorm1d(cfg.d_model)

        def feed_forward() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(cfg.d_model, cfg.d_ff),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.d_ff, cfg.d_model),
            )

        self.ff_seq = feed_forward()
        self.ff_hidden = feed_forward()

    def _ema(self, x: torch.Tensor) -> torch.Tensor:
        m = ema_matrix(x.shape[-2], self.alpha).to(x)
        return torch.einsum("ga,bshad->bshgd", m, x)

    @staticmethod
    def _reduce(x: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        weights = projection(x).softmax(dim=-2)  # [B, S, h, T, r], convex weights over T
        return torch.einsum("bshtd,bshtr->bshrd", x, weights)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        b, s, t, d = src.shape
        q, k, v = self.qkv(src).reshape(b, s, t, 3, self.heads, self.d_head).permute(3, 0, 1, 4, 2, 5)
        k_seq, v_seq = k, v
        if self.reduce_k is not None and self.reduce_v is not None:
            k_seq, v_seq = self._reduce(k, self.reduce_k), self._reduce(v, self.reduce_v)
        scores = torch.einsum("bshed,bshfd->bshef", self._ema(q), self._ema(k_seq)) / math.sqrt(self.d_head)
        along_seq = torch.einsum("bshef,bshfd->bshed", self.dropout(scores.softmax(-1)), v_seq)
        hidden_scores = torch.einsum("bshae,bshaf->bshef", q, k) / math.sqrt(t)
        along_hidden = torch.einsum("bshef,bshaf->bshae", self.dropout(hidden_scores.softmax(-1)), v)
        out_seq = _batch_norm(
            self.norm_seq, token_blend(along_seq.reshape(b * s, self.heads, t, -1), self.merge)
        )
        out_hidden = _batch_norm(
            self.norm_hidden, token_blend(along_hidden.reshape(b * s, self.heads, t, -1), self.merge)
        )
        update = (self.ff_seq(out_seq) + self.ff_hidden(out_hidden)).reshape(b, s, t, d)
        return _batch_norm(self.norm_out, src + update)


class CARDBlock(nn.Module):
    """Channel attention then token attention; x <- BN(x + Dropout(Linear(o_channel + o_token)))."""

    def __init__(self, cfg: CARDConfig) -> None:
        super().__init__()
        self.over_channels = DualAttention(cfg, rank=cfg.rank)
        self.over_tokens = DualAttention(cfg)
        self.mix = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.BatchNorm1d(cfg.d_model)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, C, T, d]
        channel_out = self.over_channels(z.transpose(1, 2)).transpose(1, 2)
        token_out = self.over_tokens(channel_out)
        return _batch_norm(self.norm, z + self.dropout(self.mix(channel_out + token_out)))


class CARDNet(nn.Module):
    """Instance norm -> patches + CLS -> CARD blocks -> flatten -> Linear -> horizon -> de-normalise."""

    def __init__(self, cfg: CARDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.patch_len, cfg.d_model)
        self.cls = nn.Parameter(torch.randn(1, 1, 1, cfg.d_model) * 0.02)
        self.position = nn.Parameter(torch.randn(1, 1, cfg.tokens, cfg.d_model) * 0.02)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(CARDBlock(cfg) for _ in range(cfg.layers))
        self.head = nn.Linear(cfg.tokens * cfg.d_model, cfg.horizon)

    def forward(self, x: torch.Tensor, marks: torch.Tensor | None = None) -> torch.Tensor:
        b, length, c = x.shape
        if length != self.cfg.seq_len:
            raise ValueError(f"CARD was built for windows of {self.cfg.seq_len}, got {length}")
        mean = x.mean(1, keepdim=True)
        std = (x.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        z = ((x - mean) / std).transpose(1, 2)  # [B, C, L]
        z = torch.cat([z, z[..., -1:].expand(-1, -1, self.cfg.stride)], -1)
        patches = self.embed(z.unfold(-1, self.cfg.patch_len, self.cfg.stride))  # [B, C, N, d]
        z = torch.cat([self.cls.expand(b, c, -1, -1), patches], 2) + self.position
        z = self.dropout(z)
        for block in self.blocks:
            z = block(z)
        out = self.head(z.reshape(b, c, -1)).transpose(1, 2)  # [B, H, C]
        return out * std + mean


class CARD(NetForecaster):
    """CARD trained (offline and online) with the signal-decay robust loss."""

    name = "card"

    def __init__(self, cfg: CARDConfig, lr: float = 1e-3, device: torch.device | None = None) -> None:
        super().__init__(CARDNet(cfg), cfg.horizon, signal_decay_l1, lr, device=device)
        self.config = asdict(cfg)
