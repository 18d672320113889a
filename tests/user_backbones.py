"""User backbone classes for the ``--backbone pkg.module:Class`` tests: plain ``torch.nn.Module``
subclasses written as a user would, with no ndgeo attribute (no receptive_field, no config).

Importing this module appends its name to the file named by ``NDGEO_TEST_IMPORT_LOG`` (when set),
so a test can tell whether a command imported it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

if os.environ.get("NDGEO_TEST_IMPORT_LOG"):
    with open(os.environ["NDGEO_TEST_IMPORT_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{__name__}\n")


class LocalMix(nn.Module):
    """Two 3x3 convolutions around a LayerNorm over the channels, residual (receptive field 2)."""

    def __init__(self, channels: int, width: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.inp(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.out(F.gelu(h))


class GlobalAttention(nn.Module):
    """Pixel embedding, LayerNorm and multi-head softmax attention over *all* pixels, residual:
    every output pixel depends on the whole input."""

    def __init__(self, channels: int, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(channels, width, 1)
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.norm(self.embed(x).flatten(2).transpose(1, 2))  # (N, HW, D)
        q, k, v = self.qkv(t).view(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, -1)
        return x + self.out(a).transpose(1, 2).reshape(n, c, h, w)
