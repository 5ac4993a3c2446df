"""The breech-face embedding network (torch).

:class:`PolarEmbeddingNet` reads the polar image of :func:`models.breech_face.polar.polar_input`
(channels: normalised heights, measured fraction; axes: radius, angle). A rotation of the breech
face about the annulus centre is a circular shift along the angle axis, and the network is built
so that such a shift does not change the embedding:

* every convolution is circular along the angle axis (zero-padded along the radius), so the
  feature maps shift with the input;
* the head treats each angle of the last map as a "spoke" (all radii and channels at that angle,
  so the radial layout is kept), maps every spoke with the same weights (1 x 1 convolutions along
  the angle) and pools the spokes over the full circle (generalised mean), which does not depend
  on where the circle starts.

The angle axis is downsampled by strided convolutions (8 x in all), so invariance is exact
(to rounding) for shifts by multiples of 8 angular samples (11.25 degrees with 256 angles) and
approximate in between; rotation augmentation teaches the strided filters to be smooth there.
``tests/test_models_network.py`` measures it.

:class:`CartesianEmbeddingNet` is the ablation without invariance by construction: a plain
CNN on the Cartesian image, global pooling, rotation invariance only from augmentation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PolarEmbeddingNet", "CartesianEmbeddingNet", "build_network"]


class _CircConv(nn.Module):
    """Conv2d on (N, C, R, T): circular padding along T (angle), zeros along R (radius)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.p = k // 2
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k // 2, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.p, self.p, 0, 0), mode="circular"))


class _GeM(nn.Module):
    """Generalised-mean pooling over the last axis (p learned, >= 1)."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=1e-6).pow(p).mean(dim=-1).pow(1.0 / p)


def _out(n: int, stride: int) -> int:
    return (n - 1) // stride + 1


class PolarEmbeddingNet(nn.Module):
    """Polar CNN -> per-angle spokes -> pooled over the circle -> L2-normalised embedding.

    Parameters
    ----------
    n_r : int
        Rings of the input (radius axis).
    layers : tuple of (channels, kernel, stride)
        The convolutions (each followed by batch norm and ReLU).
    spoke_dim : int
        Width of the per-angle spoke features.
    dim : int
        Embedding length.
    """

    def __init__(self, n_r: int = 64, *, layers: tuple[tuple[int, int, int], ...] = (
            (16, 5, 2), (32, 3, 2), (32, 3, 1), (64, 3, 2), (64, 3, 1)), spoke_dim: int = 256,
            dim: int = 128) -> None:
        super().__init__()
        self.n_r, self.dim = int(n_r), int(dim)
        mods: list[nn.Module] = []
        c, r = 2, int(n_r)
        for w, k, s in layers:
            mods += [_CircConv(c, w, k, s), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c, r = w, _out(r, s)
        self.body = nn.Sequential(*mods)
        self.r_out, self.c_out = r, c
        self.spoke = nn.Sequential(nn.Conv1d(c * r, spoke_dim, 1, bias=False), nn.BatchNorm1d(spoke_dim),
                                   nn.ReLU(inplace=True), nn.Conv1d(spoke_dim, spoke_dim, 1))
        self.pool = _GeM()
        self.head = nn.Linear(spoke_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 2, n_r, n_theta) -> (N, dim), rows L2-normalised."""
        f = self.body(x)                                    # (N, C, R', T')
        n, c, r, t = f.shape
        s = self.spoke(f.reshape(n, c * r, t))              # (N, S, T')
        v = self.head(self.pool(F.relu(s)))
        return F.normalize(v, dim=1)


class CartesianEmbeddingNet(nn.Module):
    """Ablation: a plain CNN on the Cartesian image (2 channels, centred crop), global GeM pooling.

    Not rotation-invariant by construction; trained with rotation augmentation.
    """

    def __init__(self, *, layers: tuple[tuple[int, int, int], ...] = (
            (16, 5, 2), (32, 3, 2), (32, 3, 1), (64, 3, 2), (64, 3, 1)), spoke_dim: int = 256, dim: int = 128,
            **_ignored) -> None:
        super().__init__()
        self.dim = int(dim)
        mods: list[nn.Module] = []
        c = 2
        for w, k, s in layers:
            mods += [nn.Conv2d(c, w, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(w),
                     nn.ReLU(inplace=True)]
            c = w
        self.body = nn.Sequential(*mods)
        self.proj = nn.Sequential(nn.Conv2d(c, spoke_dim, 1, bias=False), nn.BatchNorm2d(spoke_dim),
                                  nn.ReLU(inplace=True), nn.Conv2d(spoke_dim, spoke_dim, 1))
        self.pool = _GeM()
        self.head = nn.Linear(spoke_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.proj(self.body(x)))
        v = self.head(self.pool(f.flatten(2)))
        return F.normalize(v, dim=1)


def build_network(arch: str = "polar", **kwargs) -> nn.Module:
    """``"polar"`` (:class:`PolarEmbeddingNet`) or ``"cartesian"`` (:class:`CartesianEmbeddingNet`)."""
    if arch == "polar":
        return PolarEmbeddingNet(**kwargs)
    if arch == "cartesian":
        return CartesianEmbeddingNet(**kwargs)
    raise ValueError(f"unknown architecture {arch!r}; use 'polar' or 'cartesian'")
