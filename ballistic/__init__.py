"""ballistic: open ballistic comparison and correlation (pure library: no HTTP, no DB, no torch at import).

The packages follow the method: read -> preprocess -> compare -> score -> retrieve, per kind of
evidence (cartridge cases: breech face, firing pin, 2D images; bullets)::

    ballistic/
      __init__.py      this small public API (loaded lazily)
      errors.py        the one error hierarchy: BallisticError; InputError (ValueError), LimitError;
                       ProcessingError (ValueError); StateError (RuntimeError); the typed errors under them
      surface.py       Surface: heights in um, NaN = missing, spacing_um
      io/              x3p.py (read_x3p, write_x3p) image.py (read_image) source.py (what readers take)
                       atomic.py (the one atomic writer) csv.py (the one CSV writer, formula-safe);
                       read_surface in io/__init__.py
      preprocess/      filters.py: remove_trend, gaussian_lowpass, bandpass_filter, resample, rotate,
                       crop_to_mask (+ kernel _warp_rotate); form.py: fit_form, remove_form
                       (least-squares B-spline projection)
      cartridge/
        breech_face.py find_breech_face, looks_processed, preprocess_cartridge (one normalisation
                       for raw and processed scans)
        normalise.py   NormalisationParams, drop_islands, roll_off_bands, NORMALISATION_VERSION
        cmc/           params.py (CMCParams, prepare, centre_heights) register.py (masked_ncc,
                       search_rotation, local_search, register_global, warp_to_reference)
                       cells.py (cell_division, compare_cells) decision.py (cmc_count, high_cmc_count,
                       decide) pair.py (compare_pair, PairResult, ALGORITHM_VERSION)
        score/         features.py (pair_features, dbscan) model.py (PairModel, default_model,
                       firearm_cv_scores) data/pair_model.json (the shipped model)
        firing_pin.py  image2d.py  synth.py
      bullet/          profile.py (Crosscut, Grooves, Signature, shared 1-D helpers) orient.py crosscut.py
                       (+ kernel _band_profiles) grooves.py signature.py align.py features.py sam.py
                       descriptor.py
      retrieval/       descriptor.py (polar-FFT descriptor, polar sampling and centres, DescriptorModel,
                       PCAWhitener) polar_phase.py (rotation-searched polar descriptor) registry.py
                       (default_descriptor, load_descriptor: built-in "phase", "polar" + entry points) index.py
                       (VectorIndex, IndexSearch, merge_topk) search.py (Retriever.query: the one search
                       path) sharded.py (ShardedIndex) executor.py (LocalExecutor | RayExecutor) record.py
                       (SearchRecord)
      stats/           correlation.py (pairwise-complete correlation: the one accumulator; kernels
                       _pairwise_complete_corr, _cell_corr_at_offsets, _ccf_at_lags) metrics.py calibrate.py
      viz/             explain.py (explanation figure) render.py (shading, PNG) plots.py (benchmark plots)
      bench/           cartridge.py bullet.py retrieval.py generalization.py (``ballistic bench ...``)
      cli.py           the ``ballistic`` command's library commands

Layers (checked by import-linter, ``pyproject.toml``; a package may import only from layers below):
cli > bench > viz | retrieval > cartridge | bullet > preprocess | stats > io > surface > errors.
Numba kernels are private (``_name``) beside the public function that wraps them; their slow
pure-numpy twins are in ``tests/naive.py``.

Public API (``import ballistic`` loads only numpy; each name below imports its module on first use):

* :class:`Surface`, :func:`read_surface`, :func:`read_x3p`, :func:`write_x3p`, :func:`read_image`
* :func:`preprocess_cartridge`, :class:`CMCParams`, :func:`compare_pair`, :class:`PairResult`,
  :func:`explanation_figure`
* :func:`land_signatures`, :func:`bullet_score`
* :func:`default_descriptor` (the breech-face descriptor every tool uses), :func:`load_descriptor`,
  :func:`available_descriptors`
* :class:`BallisticError`, :class:`InputError`, :class:`LimitError`, :class:`ProcessingError`,
  :class:`StateError`
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ballistic.errors import BallisticError, InputError, LimitError, ProcessingError, StateError
from ballistic.surface import Surface

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY = {
    "read_surface": "ballistic.io",
    "read_x3p": "ballistic.io.x3p",
    "write_x3p": "ballistic.io.x3p",
    "read_image": "ballistic.io.image",
    "preprocess_cartridge": "ballistic.cartridge.breech_face",
    "CMCParams": "ballistic.cartridge.cmc.params",
    "compare_pair": "ballistic.cartridge.cmc.pair",
    "PairResult": "ballistic.cartridge.cmc.pair",
    "explanation_figure": "ballistic.viz.explain",
    "land_signatures": "ballistic.bullet.signature",
    "bullet_score": "ballistic.bullet.sam",
    "default_descriptor": "ballistic.retrieval.registry",
    "load_descriptor": "ballistic.retrieval.registry",
    "available_descriptors": "ballistic.retrieval.registry",
}

__all__ = ["Surface", "BallisticError", "InputError", "LimitError", "ProcessingError", "StateError",
           *_LAZY, "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ballistic.bullet.sam import bullet_score
    from ballistic.bullet.signature import land_signatures
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.cartridge.cmc.pair import PairResult, compare_pair
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.io import read_surface
    from ballistic.io.image import read_image
    from ballistic.io.x3p import read_x3p, write_x3p
    from ballistic.retrieval.registry import available_descriptors, default_descriptor, load_descriptor
    from ballistic.viz.explain import explanation_figure


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ballistic' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
