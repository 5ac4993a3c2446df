"""Training of the breech-face embedding: supervised contrastive loss on real and synthetic firearms.

Each step draws a batch of firearms, several views each:

* every real training firearm (all of them unless held out by a fold), ``real_views`` views, each
  a different scan of that firearm where it has enough (then augmented);
* ``synth_firearms`` synthetic firearms from the pool (:func:`models.breech_face.data.synthetic_pool`),
  ``synth_views`` different firings each (augmented).

Loss: supervised contrastive (InfoNCE with every other view of the same firearm as a positive,
temperature ``temperature``) over the whole batch, so real firearms are negatives of each other
(consecutively manufactured slides in Fadul: the hardest negatives there are) and of the synthetic
ones. Batches are generated from ``default_rng([seed, step])`` in a worker process, so a run is
reproducible whatever the timing. CPU only.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from models.breech_face.data import AugmentConfig, RealScan, cartesian_view, make_view
from models.breech_face.network import build_network
from models.breech_face.polar import PolarGrid

__all__ = ["TrainConfig", "BatchMaker", "supcon_loss", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored with the weights)."""

    seed: int = 0
    steps: int = 1200
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    temperature: float = 0.1
    real: bool = True
    real_views: int = 3
    synth: bool = True
    synth_firearms: int = 40
    synth_views: int = 2
    arch: str = "polar"
    grid: dict = field(default_factory=lambda: PolarGrid().as_dict())
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    dim: int = 128
    threads: int = 2
    workers: int = 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "out" form) of L2-normalised rows ``z``."""
    sim = z @ z.T / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, -1e9)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    npos = pos.sum(1)
    ok = npos > 0
    loss = -(logp * pos).sum(1)[ok] / npos[ok]
    return loss.mean()


class BatchMaker:
    """Builds the views of one step (picklable, so a DataLoader worker can run it)."""

    def __init__(self, cfg: TrainConfig, real: Sequence[RealScan], synth: np.ndarray | None) -> None:
        from ballistic.retrieval.descriptor import annulus_centre
        from ballistic.surface import Surface

        self.cfg = cfg
        self.grid = PolarGrid(**cfg.grid)
        by: dict[str, list[int]] = {}
        for i, s in enumerate(real):
            by.setdefault(s.firearm, []).append(i)
        self.real_groups = [v for _, v in sorted(by.items())] if cfg.real else []
        self.real = [s.surface.heights.astype(np.float32) for s in real]
        self.real_geom = [annulus_centre(s.surface) for s in real]
        self.synth = synth if cfg.synth else None
        if not self.real_groups and self.synth is None:
            raise ValueError("TrainConfig: neither real nor synthetic data to train on")
        self._Surface = Surface

    def _view(self, z: np.ndarray, rng: np.random.Generator, geom=None) -> np.ndarray:
        if self.cfg.arch == "cartesian":
            return cartesian_view(z, rng, self.cfg.augment, geometry=geom)
        return make_view(z, rng, self.cfg.augment, self.grid, geometry=geom)

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.cfg.seed, 101, step])
        views, labels = [], []
        lab = 0
        for g in self.real_groups:
            k = self.cfg.real_views
            picks = rng.permutation(g)[:k] if len(g) >= k else rng.choice(g, k, replace=True)
            if len(g) >= 2 and len(set(picks.tolist())) < 2:
                picks[1] = next(i for i in g if i != picks[0])
            for i in picks:
                views.append(self._view(self.real[i], rng, self.real_geom[i]))
                labels.append(lab)
            lab += 1
        if self.synth is not None:
            nf, nfi = self.synth.shape[:2]
            for f in rng.choice(nf, self.cfg.synth_firearms, replace=False):
                for j in rng.choice(nfi, min(self.cfg.synth_views, nfi), replace=False):
                    views.append(self._view(self.synth[f, j].astype(np.float32), rng))
                    labels.append(lab)
                lab += 1
        return np.stack(views), np.asarray(labels)


class _Steps(torch.utils.data.IterableDataset):
    def __init__(self, maker: BatchMaker, start: int, stop: int) -> None:
        self.maker, self.start, self.stop = maker, start, stop

    def __iter__(self):
        for s in range(self.start, self.stop):
            x, y = self.maker(s)
            yield torch.from_numpy(x), torch.from_numpy(y)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def train(cfg: TrainConfig, real: Sequence[RealScan], synth: np.ndarray | None, *,
          init_state: dict | None = None, progress: bool = True, desc: str = "train") -> tuple[torch.nn.Module, dict]:
    """Train a network from scratch (or from ``init_state``); returns (model in eval mode, log).

    The log holds the loss every 25 steps, wall and CPU seconds.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    grid = PolarGrid(**cfg.grid)
    model = build_network(cfg.arch, n_r=grid.n_r, dim=cfg.dim)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    maker = BatchMaker(cfg, real, synth)
    loader = torch.utils.data.DataLoader(_Steps(maker, 0, cfg.steps), batch_size=None,
                                         num_workers=cfg.workers, prefetch_factor=4 if cfg.workers else None,
                                         persistent_workers=False, worker_init_fn=_worker_init,
                                         # a forked worker can inherit a lock held by a thread of this
                                         # process (OpenCV/OpenMP pools) and hang: start it fresh
                                         multiprocessing_context="spawn" if cfg.workers else None)
    t0, c0 = time.perf_counter(), time.process_time()
    log: dict = {"loss": [], "config": cfg.as_dict()}
    it = loader
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    run = 0.0
    for step, (x, y) in enumerate(it):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        z = model(x)
        loss = supcon_loss(z, y, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = float(loss.detach())
        run = 0.95 * run + 0.05 * lv if step else lv
        if step % 25 == 0 or step == cfg.steps - 1:
            log["loss"].append((step, round(run, 4)))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{run:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    log["wall_s"] = round(time.perf_counter() - t0, 1)
    log["cpu_s_main"] = round(time.process_time() - c0, 1)
    return model, log
