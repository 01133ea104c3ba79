"""Time-conditioned MLP for point data (2-D toy sets or any flat vectors)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sin/cos features of times ``t`` [B] in [0, 1] -> [B, dim] (frequencies 1 .. max_period)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_period), half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb.to(t.dtype) if t.is_floating_point() else emb


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # The condition (time, label) enters every block, as in diffusion UNets: a single input-layer
        # injection makes the field's dependence on t hard to learn near the endpoints.
        u = self.fc1(nn.functional.silu(self.norm(h) + cond))
        return h + self.fc2(self.drop(nn.functional.silu(u)))


class MLP(nn.Module):
    """``f(t, x, y)``: x [B, D], t [B], y [B] labels or None -> [B, D]."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 256,
        depth: int = 3,
        time_embed_dim: int = 64,
        num_classes: int = 0,
        dropout: float = 0.0,
        class_dropout: float = 0.0,
    ):
        super().__init__()
        self.dim, self.time_embed_dim, self.num_classes = dim, time_embed_dim, num_classes
        self.inp = nn.Linear(dim, hidden_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        # Trained with label dropout, the model has one more row: the null label ``num_classes``.
        rows = num_classes + (class_dropout > 0)
        self.label_emb = nn.Embedding(rows, hidden_dim) if num_classes else None
        self.blocks = nn.ModuleList(ResidualBlock(hidden_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))

    def forward(self, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.time_mlp(sinusoidal_embedding(t, self.time_embed_dim))
        if self.label_emb is not None:
            if y is None:
                raise ValueError("this model is class-conditional: pass labels y")
            cond = cond + self.label_emb(y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)
