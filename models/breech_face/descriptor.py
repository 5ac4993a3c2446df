"""The learned breech-face descriptor ("bf-learned/1") as a :class:`ballistic.retrieval.descriptor.DescriptorModel`.

Registered under the entry point group ``ballistic.descriptors`` (name ``learned``, see pyproject.toml);
:func:`ballistic.retrieval.registry.default_descriptor` finds it there at run time, so the library never imports
this package. torch is imported when a descriptor is built, never when this module is imported.

Use::

    from ballistic.retrieval.registry import load_descriptor
    d = load_descriptor("learned")
    v = d(surface)                          # float32 (128,), L2-normalised
    V = d.describe_many(surfaces)           # (n, 128), batched (bulk indexing)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

from ballistic.errors import DescriptorError
from ballistic.surface import Surface

__all__ = ["LEARNED_VERSION", "DEFAULT_WEIGHTS", "LearnedDescriptor", "learned_descriptor", "load_checkpoint"]

LEARNED_VERSION = "bf-learned/1"
#: The shipped weights (trained on all real data, see MODEL_CARD.md).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "bf-learned-1.pt"


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :mod:`models.breech_face.train` (tensors and plain data only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file; train one with `python -m models.train`")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise ValueError(f"{path}: not a breech-face embedding checkpoint (no state_dict/config)")
    return ck


class LearnedDescriptor:
    """Polar CNN embedding of a preprocessed breech face.

    Parameters
    ----------
    weights : path, optional
        Checkpoint; default the shipped :data:`DEFAULT_WEIGHTS`.
    batch_size : int, keyword-only
        Scans per forward pass in :meth:`describe_many`.
    threads : int, optional, keyword-only
        Set torch's (process-wide) intra-op threads, e.g. 1 in each worker of a process pool.

    Attributes
    ----------
    name : str
        ``"bf-learned/1?weights=<sha256 prefix>"``: stored with every index built from it, so new
        weights mean a re-index.
    dim : int
        Embedding length (128).
    """

    def __init__(self, weights: str | Path | None = None, *, batch_size: int = 64, threads: int | None = None) -> None:
        import torch

        if threads is not None:        # process-wide (torch's intra-op pool): for worker processes
            torch.set_num_threads(int(threads))

        from models.breech_face.network import build_network
        from models.breech_face.polar import PolarGrid
        from models.breech_face.train import TrainConfig

        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        ck = load_checkpoint(path)
        cfg = TrainConfig.from_dict(ck["config"])
        self.config = cfg
        self.grid = PolarGrid(**cfg.grid)
        self.model = build_network(cfg.arch, n_r=self.grid.n_r, dim=cfg.dim)
        self.model.load_state_dict(ck["state_dict"])
        self.model.eval()
        self.arch = cfg.arch
        self.dim = int(cfg.dim)
        self.batch_size = int(batch_size)
        self.meta = dict(ck.get("meta", {}))
        self.weights_path = path
        self.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.name = f"{LEARNED_VERSION}?weights={self.weights_sha256[:16]}"
        #: descriptors with equal ``input_key`` take the same :meth:`inputs` (bulk jobs compute them once)
        self.input_key = ("bf-learned-input", cfg.arch, tuple(sorted(self.grid.as_dict().items())))
        self._torch = torch

    # -------------------------------------------------------------- inputs
    def inputs(self, surface: Surface) -> np.ndarray:
        """Network input of one preprocessed breech face: (2, n_r, n_theta) float32."""
        from models.breech_face.polar import polar_input

        if not isinstance(surface, Surface):
            raise TypeError(f"expected a Surface (preprocess_cartridge output), got {type(surface).__name__}")
        if self.arch == "cartesian":
            from models.breech_face.data import cartesian_view
            from ballistic.preprocess.filters import resample

            s = resample(surface, spacing_um=self.grid.spacing_um)
            if int(s.mask.sum()) < 64:
                raise DescriptorError(f"{self.name}: fewer than 64 measured points at {self.grid.spacing_um} um")
            return cartesian_view(s.heights, None, self.config.augment)
        try:
            return polar_input(surface, self.grid)
        except ValueError as e:
            raise DescriptorError(f"{self.name}: {e}") from e

    def embed_inputs(self, X: np.ndarray) -> np.ndarray:
        """Embeddings (n, dim) float32 of a stack of network inputs (n, 2, n_r, n_theta)."""
        torch = self._torch
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty((len(X), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, len(X), self.batch_size):
                out[lo:lo + self.batch_size] = self.model(torch.from_numpy(X[lo:lo + self.batch_size])).numpy()
        return out

    # -------------------------------------------------------------- DescriptorModel
    def __call__(self, surface: Surface) -> np.ndarray:
        """float32 (dim,), L2-normalised, of one preprocessed breech face (any orientation)."""
        return self.embed_inputs(self.inputs(surface)[None])[0]

    def describe_many(self, surfaces: Iterable[Surface]) -> np.ndarray:
        """Batch API for bulk indexing: (n, dim) float32, row i = ``self(surfaces[i])``."""
        surfaces = list(surfaces)
        if not surfaces:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.embed_inputs(np.stack([self.inputs(s) for s in surfaces]))

    def __repr__(self) -> str:
        return f"LearnedDescriptor({self.name!r})"


def learned_descriptor(weights: str | Path | None = None, **options) -> LearnedDescriptor:
    """Entry point of the ``ballistic.descriptors`` group: the shipped learned descriptor (or ``weights``)."""
    return LearnedDescriptor(weights, **options)


