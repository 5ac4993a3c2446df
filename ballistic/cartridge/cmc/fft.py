"""The real 2-D Fourier transforms of the masked cross-correlations (registration and cells).

Every transform of a comparison - the rotation prior, the thorough search, the cells' translations -
goes through :func:`rfft2` and :func:`irfft2` here, computed by one of two backends:

``"torch"``
    torch's CPU FFT (Intel MKL on x86; torch is a pinned runtime dependency of the package), on one
    thread for the duration of each call: on the batched float32 transforms of a comparison it is
    about twice as fast as pocketfft per core, a whole comparison takes 0.78-0.89 of the time
    (``benchmarks/bench_fft_backend.py``); a pair is compared on one core (benchmarks and the service run
    one comparison per process; two torch threads in each of two processes on two cores ran 2.5x slower).
``"scipy"``
    scipy's pocketfft, the reference; what ``"auto"`` falls back to when torch cannot be imported.

``$BALLISTIC_FFT`` chooses (``auto``, the default: torch when importable; ``torch``; ``scipy``). The
two backends agree to float rounding (~1e-6 of the signal in float32), which can move a correlation
peak between two equal neighbours; they compute the same statistic (``tests/test_fft_backend.py``).
torch is imported on the first transform, never with :mod:`ballistic`.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager

import numpy as np
import scipy.fft as sfft

from ballistic.errors import InputError

__all__ = ["FFT_ENV", "FFT_BACKENDS", "fft_backend", "rfft2", "irfft2", "next_fast_len"]

log = logging.getLogger("ballistic.fft")

#: environment variable that chooses the backend
FFT_ENV = "BALLISTIC_FFT"
#: the values it may take
FFT_BACKENDS = ("auto", "torch", "scipy")

_lock = threading.Lock()
_resolved: dict[str, str] = {}        # asked -> backend in use (auto resolves once per process)


def fft_backend(name: str | None = None) -> str:
    """The backend the transforms use: ``"torch"`` or ``"scipy"``.

    Parameters
    ----------
    name : {"auto", "torch", "scipy"}, optional
        Default: ``$BALLISTIC_FFT``, else ``"auto"`` (torch when it imports, else scipy, saying why once).

    Raises
    ------
    InputError
        An unknown name, or ``"torch"`` asked for where torch cannot be imported.
    """
    asked = (name if name is not None else os.environ.get(FFT_ENV, "auto")).strip().lower() or "auto"
    if asked not in FFT_BACKENDS:
        raise InputError(f"FFT backend {asked!r} (${FFT_ENV}) is not one of {FFT_BACKENDS}; "
                         f"unset ${FFT_ENV} for the default")
    got = _resolved.get(asked)
    if got is not None:
        return got
    with _lock:
        if asked == "scipy":
            got = "scipy"
        else:
            try:
                import torch  # noqa: F401 - lazily: import ballistic stays fast
                got = "torch"
            except Exception as e:  # noqa: BLE001 - any import failure (missing, broken, out of memory)
                if asked == "torch":
                    raise InputError(f"FFT backend 'torch' asked for, but torch cannot be imported "
                                     f"({type(e).__name__}: {e}); install torch, or use 'scipy' "
                                     f"(${FFT_ENV}=scipy)") from e
                log.warning("FFT backend: torch cannot be imported (%s: %s); using scipy's pocketfft, about "
                            "half the speed", type(e).__name__, e)
                got = "scipy"
        _resolved[asked] = got
    return got


@contextmanager
def _one_torch_thread():
    """torch's intra-op threads at 1 for one call, then as they were: a comparison runs on one core, and
    the benchmarks and the service run one per process (two threads each on two cores run ~2.5x slower)."""
    import torch

    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield torch
    finally:
        if n != 1:
            torch.set_num_threads(n)


def rfft2(x: np.ndarray, shape: tuple[int, int], *, backend: str | None = None) -> np.ndarray:
    """Real-to-complex transform over the last two axes, zero-padded (or cropped) to ``shape``.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (..., H, W)
    shape : (int, int)
        Transform size (see :func:`next_fast_len`).
    backend : str, optional, keyword-only
        As :func:`fft_backend`'s ``name``.

    Returns
    -------
    ndarray of complex64 (float32 input) or complex128, shape (..., shape[0], shape[1] // 2 + 1)
    """
    s = (int(shape[0]), int(shape[1]))
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):      # integers, float16, another byte order: as scipy would
        x = x.astype(np.float32 if x.dtype.kind == "f" and x.dtype.itemsize <= 4 else np.float64)
    if fft_backend(backend) == "scipy":
        return sfft.rfft2(x, s=s, axes=(-2, -1))
    with _one_torch_thread() as torch:
        return torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(x)), s=s).numpy()


def irfft2(X: np.ndarray, shape: tuple[int, int], *, backend: str | None = None) -> np.ndarray:
    """Inverse of :func:`rfft2`: complex ``X`` (..., shape[0], shape[1] // 2 + 1) to real (..., *shape)."""
    s = (int(shape[0]), int(shape[1]))
    X = np.asarray(X)
    if X.dtype not in (np.complex64, np.complex128):
        X = X.astype(np.complex64 if X.dtype.kind == "c" and X.dtype.itemsize <= 8 else np.complex128)
    if fft_backend(backend) == "scipy":
        return sfft.irfft2(X, s=s, axes=(-2, -1))
    with _one_torch_thread() as torch:
        return torch.fft.irfft2(torch.from_numpy(np.ascontiguousarray(X)), s=s).numpy()


def next_fast_len(n: int) -> int:
    """The smallest size >= ``n`` whose real transform both backends compute fast (5-smooth)."""
    return int(sfft.next_fast_len(int(n), real=True))
