"""Which breech-face descriptor every tool uses: a registry of :class:`DescriptorModel` factories by name.

* ``"polar"`` is built in (:class:`~ballistic.retrieval.descriptor.PolarFFTDescriptor`, "bf-polar-fft/2"), and
  ``"phase"`` (:class:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor`, "bf-polar-phase/1": the same
  polar harmonics with their phases, the rotation searched by query expansion);
* other packages register more through the entry-point group :data:`DESCRIPTOR_GROUP`
  (``name = "module:factory"``; the factory, called without arguments, returns a descriptor). The learned
  embedding of ``models/`` registers ``learned`` there, so this library never imports ``models`` or torch:
  the entry point is looked up, and its module imported, only when that name is asked for.

:func:`default_descriptor` is the one answer to "which descriptor?" for the service, the CLI and the
benchmarks: ``$BALLISTIC_DESCRIPTOR`` when set, else :data:`DEFAULT_DESCRIPTOR`. A registered descriptor
that fails to load (torch not installed, weights missing or unreadable) falls back to the polar-FFT
descriptor with a logged warning that says why; an unknown name is an error (a typo must not silently
change what an index holds).

:data:`DEFAULT_DESCRIPTOR` is ``"phase"``, the rotation-searched polar descriptor: it fits nothing (so every
study is held out), and on both labelled sets it finds more mates than the polar-FFT descriptor at every
shortlist length measured (``ballistic bench retrieval --descriptor phase,polar``, FAISS stage, recall of the
mates, rotation draw 0: Fadul among its 40 scans @10 1.000 vs 0.850, among 10 000 synthetic distractors
@10 0.988 vs 0.606 and @100 0.994 vs 0.848; DFSC 1.000 vs 0.956, and 0.706 vs 0.382, 0.868 vs 0.471; polar
PCA-whitened on distractors, as the benchmark runs it; ``benchmarks/results/retrieval_phase_*.json``). Its
cost: a query is 256 rotated copies, scored over a Flat index by one rotation scan (0.07 s among 10^5 vectors
on 2 cores, :func:`~ballistic.retrieval.polar_phase.rotation_scan`). ``BALLISTIC_DESCRIPTOR=polar`` keeps the
polar-FFT descriptor (640 values, one row a query). The learned embedding shipped with ``models/`` ("bf-learned/1") falls below polar when a whole
study is held out (``models/breech_face/MODEL_CARD.md``); ``BALLISTIC_DESCRIPTOR=learned`` (or the service's
``descriptor`` setting) chooses it; where it cannot load (torch not installed, weights missing) the polar-FFT
descriptor is used and the reason logged.
"""
from __future__ import annotations

import logging
import os
import threading

from ballistic.errors import DescriptorError
from ballistic.retrieval.descriptor import DescriptorModel, PolarFFTDescriptor
from ballistic.retrieval.polar_phase import PolarPhaseDescriptor

__all__ = ["DESCRIPTOR_GROUP", "DESCRIPTOR_ENV", "DEFAULT_DESCRIPTOR", "available_descriptors", "load_descriptor",
           "default_descriptor"]

#: Entry-point group through which other packages register descriptors.
DESCRIPTOR_GROUP = "ballistic.descriptors"
#: Environment variable naming the default descriptor (``phase``, ``polar``, ``learned``, ...).
DESCRIPTOR_ENV = "BALLISTIC_DESCRIPTOR"
#: The descriptor used when :data:`DESCRIPTOR_ENV` is not set (see the module notes for why).
DEFAULT_DESCRIPTOR = "phase"
#: Descriptors of this library itself (no entry point needed).
_BUILT_IN = {"polar": PolarFFTDescriptor, "phase": PolarPhaseDescriptor}

_log = logging.getLogger(__name__)
_loaded: dict[str, DescriptorModel] = {}
_lock = threading.Lock()


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=DESCRIPTOR_GROUP)}


def available_descriptors() -> list[str]:
    """Names :func:`load_descriptor` accepts: ``"polar"`` and ``"phase"`` (built in) and every registered entry
    point.

    Registered is not loadable: ``"learned"`` is listed when ``models/`` is installed, even if torch or the
    weights are missing (:func:`load_descriptor` then says why).
    """
    return sorted({*_BUILT_IN, *_entry_points()})


def load_descriptor(name: str, **options) -> DescriptorModel:
    """A descriptor by name (built once per process and shared; a new one when ``options`` are given).

    Parameters
    ----------
    name : str
        ``"polar"``, ``"phase"`` or a name registered in :data:`DESCRIPTOR_GROUP` (e.g. ``"learned"``).
    **options
        Passed to the registered factory (e.g. ``weights=`` of the learned descriptor) or to the built-in
        class (:class:`~ballistic.retrieval.descriptor.PolarFFTDescriptor`,
        :class:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor`).

    Raises
    ------
    DescriptorError
        Unknown name, or the registered descriptor failed to load (its module, torch or its weights); the
        message names the entry point and the cause.
    """
    name = str(name).strip()
    with _lock:
        if name in _loaded and not options:
            return _loaded[name]
    if name in _BUILT_IN:
        d: DescriptorModel = _BUILT_IN[name](**options)
    else:
        eps = _entry_points()
        if name not in eps:
            raise DescriptorError(f"unknown descriptor {name!r}; available: {', '.join(available_descriptors())} "
                                  f"(set {DESCRIPTOR_ENV} to one of them)")
        try:
            obj = eps[name].load()
            d = obj(**options) if callable(obj) and not isinstance(obj, DescriptorModel) else obj
        except Exception as e:  # an optional dependency or a weights file may be missing or broken
            raise DescriptorError(f"descriptor {name!r} ({eps[name].value}) failed to load: "
                                  f"{type(e).__name__}: {e}") from e
        if not isinstance(d, DescriptorModel):
            raise DescriptorError(f"descriptor {name!r} ({eps[name].value}) is not a DescriptorModel "
                                  "(it needs name, dim and __call__(surface) -> vector)")
    if options:
        return d
    with _lock:
        return _loaded.setdefault(name, d)


def default_descriptor(name: str | None = None) -> DescriptorModel:
    """The descriptor the service, the CLI and the benchmarks use.

    ``name`` when given (the service passes its ``descriptor`` setting), else ``$BALLISTIC_DESCRIPTOR`` when
    set, else :data:`DEFAULT_DESCRIPTOR` (the rotation-searched polar descriptor). A registered descriptor
    that fails to load falls back to the polar-FFT one, with a warning logged that gives the reason.

    Raises
    ------
    DescriptorError
        The name asked for is neither built in nor registered.
    """
    want = (name or "").strip() or os.environ.get(DESCRIPTOR_ENV, "").strip() or DEFAULT_DESCRIPTOR
    if want in _BUILT_IN:
        return load_descriptor(want)
    if want not in _entry_points():
        raise DescriptorError(f"descriptor {want!r} (argument or {DESCRIPTOR_ENV}) is unknown; available: "
                              f"{', '.join(available_descriptors())}")
    try:
        return load_descriptor(want)
    except DescriptorError as e:
        _log.warning("falling back to the polar-FFT descriptor: %s", e)
        return load_descriptor("polar")
