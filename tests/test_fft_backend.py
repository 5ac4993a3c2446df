"""The FFT backends of the masked cross-correlations (ballistic.cartridge.cmc.fft): torch's MKL and scipy's
pocketfft compute the same transforms and the same masked NCC; the choice, its fallback and its errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import naive
from ballistic.cartridge.cmc import fft
from ballistic.cartridge.cmc.register import masked_ncc
from ballistic.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["torch", "scipy"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,s", [((7, 9), (7, 9)), ((3, 2, 5, 6), (8, 10)), ((1, 12, 15), (16, 15)),
                                     ((4, 1), (5, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transforms_match_numpy(backend, shape, s, dtype):
    rng = np.random.default_rng(len(shape) + s[0])
    x = rng.normal(size=shape).astype(dtype)
    X = fft.rfft2(x, s, backend=backend)
    want = np.fft.rfft2(x.astype(np.float64), s=s, axes=(-2, -1))
    assert X.shape == want.shape
    assert X.dtype == (np.complex64 if dtype == np.float32 else np.complex128)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(X, want, atol=tol * np.abs(want).max())
    back = fft.irfft2(X, s, backend=backend)
    assert back.shape == shape[:-2] + s and back.dtype == dtype
    padded = np.zeros(shape[:-2] + s)
    h, w = min(s[0], shape[-2]), min(s[1], shape[-1])
    padded[..., :h, :w] = x[..., :h, :w]
    np.testing.assert_allclose(back, padded, atol=tol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_input_types_are_transformed_as_scipy_would(backend):
    x = np.arange(20, dtype=np.int64).reshape(4, 5)
    want = np.fft.rfft2(x.astype(np.float64), s=(6, 5))
    for arr in (x, x.astype(">f8"), x.astype(">f4"), x.astype(np.float16), x.T.copy().T[:, ::-1][:, ::-1]):
        got = fft.rfft2(arr, (6, 5), backend=backend)
        np.testing.assert_allclose(got, want, atol=1e-3)
        np.testing.assert_allclose(fft.irfft2(got.astype(">c16"), (6, 5), backend=backend)[:4], x, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_masked_ncc_matches_twin_with_each_backend(monkeypatch, backend, centred, dtype):
    monkeypatch.setenv(fft.FFT_ENV, backend)
    rng = np.random.default_rng(11)
    fixed, moving = rng.normal(size=(13, 10)), rng.normal(size=(6, 8))
    fixed[rng.random(fixed.shape) < 0.25] = np.nan
    moving[rng.random(moving.shape) < 0.25] = np.nan
    moving[:, 0] = np.nan                                    # an unmeasured column: NaN is missing, not zero
    got, n = masked_ncc(fixed, moving, min_overlap=5, dtype=dtype, centred=centred, shifts=(-3, 9, -5, 7))
    want, wn = naive.masked_ncc(fixed, moving, 5, (-3, 9, -5, 7), centred=centred)
    np.testing.assert_array_equal(n, wn)
    tol = dict(rtol=1e-6, atol=1e-9) if dtype is np.float64 else dict(atol=1e-3)
    np.testing.assert_allclose(got, want, equal_nan=True, **tol)


def test_backends_agree_on_a_rotation_search_to_float_rounding(monkeypatch):
    """The same batched float32 search (the rotation prior's form) by both: values within 1e-5, same peaks."""
    from ballistic.cartridge.cmc.register import search_rotation

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:48, 0:48]
    z = rng.normal(size=(48, 48))
    z[np.hypot(yy - 23.5, xx - 23.5) > 22] = np.nan
    out = {}
    for b in BACKENDS:
        monkeypatch.setenv(fft.FFT_ENV, b)
        out[b] = search_rotation(z, np.rot90(z).copy(), np.arange(0, 360, 15.0), min_overlap=200, mirror=True)
    for a, b in zip(out["torch"], out["scipy"]):
        assert a[1:] == b[1:]                                  # angle, translation, parity
        assert a[0] == pytest.approx(b[0], abs=1e-5)


def test_choice_by_environment_and_errors(monkeypatch):
    monkeypatch.setenv(fft.FFT_ENV, "scipy")
    assert fft.fft_backend() == "scipy"
    monkeypatch.setenv(fft.FFT_ENV, " Torch ")
    assert fft.fft_backend() == "torch"
    monkeypatch.delenv(fft.FFT_ENV)
    assert fft.fft_backend() == "torch"                       # auto, torch installed (a pinned dependency)
    monkeypatch.setenv(fft.FFT_ENV, "mkl")
    with pytest.raises(InputError, match="BALLISTIC_FFT.*not one of"):
        fft.fft_backend()
    with pytest.raises(InputError, match="not one of"):
        fft.rfft2(np.zeros((2, 2)), (2, 2), backend="fftw")


def test_auto_falls_back_to_scipy_and_explicit_torch_says_why(monkeypatch, caplog):
    monkeypatch.setattr(fft, "_resolved", {})
    monkeypatch.setitem(sys.modules, "torch", None)           # import torch raises ImportError
    with caplog.at_level("WARNING", logger="ballistic.fft"):
        assert fft.fft_backend("auto") == "scipy"
    assert "torch cannot be imported" in caplog.text
    x = np.random.default_rng(0).normal(size=(5, 6))
    np.testing.assert_allclose(fft.irfft2(fft.rfft2(x, (5, 6), backend="auto"), (5, 6), backend="auto"), x,
                               atol=1e-12)
    with pytest.raises(InputError, match=r"torch cannot be imported.*install torch, or use .scipy."):
        fft.fft_backend("torch")


def test_torch_threads_are_restored_after_each_transform():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fft.irfft2(fft.rfft2(np.ones((4, 8, 8), np.float32), (8, 8), backend="torch"), (8, 8), backend="torch")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_importing_the_comparison_does_not_import_torch():
    code = ("import sys, ballistic.cartridge.cmc.pair, ballistic.cartridge.cmc.register;"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
