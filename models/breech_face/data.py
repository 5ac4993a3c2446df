"""Training data of the breech-face embedding: real labelled scans, synthetic firearms, augmentations.

Real scans (``../shared/data/cartridge``; never copied into the project) are grouped by firearm
across studies, and by physical cartridge case, because some files are other scans or other
processings of the same case (``fadul-raw`` 1.1/1.2/2.1 are Fadul 1-1/1-2/2-1; Baldwin K013sA1/A2
are DFSC K013sA1/A2_processed): a fold that holds out a firearm holds out every file of it.

* ``fadul/`` (labels.csv, column ``slide``): firearm ``fadul:<slide>``;
* ``fadul-raw/`` (``fadulS.F_raw``): firearm ``fadul:S``, case ``Fadul S-F``;
* ``dfsc/`` (labels.csv, column ``slide`` = gun letter): firearm ``dfsc:<gun>``;
* ``baldwin/`` (``K<kit><letter><GUN><n>``): firearm ``dfsc:<GUN>`` (the same DFSC Ruger SR9 guns).

Every scan goes through :func:`ballistic.cartridge.breech_face.preprocess_cartridge` (so the embedding inherits
whatever that does for other scanners) and is kept at the training spacing (25 um).

Augmentations (:class:`AugmentConfig`, on the Cartesian 25 um image, NaN = missing) mimic casework:
partial contact (impression amplitude modulated, weakly marked areas lost), drop-outs (sectors, chord
cuts, blobs, eroded rims, speckle), measurement noise and spikes, another instrument's lateral
resolution and calibration (blur, scale), another pipeline's filtering (extra high-pass), and any
rotation (exact, in the polar sampling) with the annulus centre found again on the augmented mask.
"""
from __future__ import annotations

import csv
import hashlib
import math
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

from ballistic.retrieval.descriptor import annulus_centre
from ballistic.io.atomic import atomic_write
from ballistic.preprocess.filters import resample
from ballistic.surface import Surface
from models.breech_face.polar import PolarGrid, normalise_heights, polar_centre

__all__ = ["RealScan", "load_real_scans", "AugmentConfig", "augment", "make_view", "cartesian_view",
           "synthetic_pool", "SYNTH_TRAIN_SEED0"]

#: Synthetic training firearms use seeds from here (benchmark distractors use seeds from 0).
SYNTH_TRAIN_SEED0 = 50_000_000


@dataclass
class RealScan:
    """One real scan at the training spacing.

    ``firearm`` groups scans across studies; ``case`` names the physical cartridge case.
    """

    name: str
    study: str
    firearm: str
    case: str
    surface: Surface          # preprocessed, resampled to the training spacing


_BALDWIN = re.compile(r"^(K\d{3})[a-z]([A-Z])(\d+)")
_FADUL_RAW = re.compile(r"^fadul(\d+)\.(\d+)_raw$")


def _real_index(root: Path) -> list[tuple[str, str, str, Path]]:
    """(study, firearm, case, path) of every known real cartridge scan under ``root`` (cartridge/...)."""
    out = []
    cart = root / "cartridge"
    for study in ("fadul", "dfsc"):
        lab = cart / study / "labels.csv"
        if not lab.is_file():
            continue
        with open(lab, newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                p = cart / study / Path(row["path"]).name
                case = row["scan"].replace("_processed", "")
                out.append((study, f"{study if study == 'fadul' else 'dfsc'}:{row['slide']}", case, p))
    for p in sorted((cart / "fadul-raw").glob("*.x3p")):
        m = _FADUL_RAW.match(p.stem)
        if m:
            out.append(("fadul-raw", f"fadul:{m.group(1)}", f"Fadul {m.group(1)}-{m.group(2)}", p))
    for p in sorted((cart / "baldwin").glob("*.x3p")):
        m = _BALDWIN.match(p.stem)
        if m:
            out.append(("baldwin", f"dfsc:{m.group(2)}", f"{m.group(1)}{p.stem[4]}{m.group(2)}{m.group(3)}", p))
    return out


def load_real_scans(root: str | Path, *, spacing_um: float = 25.0, cache_dir: str | Path | None = None,
                    studies: tuple[str, ...] = ("fadul", "fadul-raw", "dfsc", "baldwin")) -> list[RealScan]:
    """Read, preprocess (:func:`preprocess_cartridge`) and resample every known real scan under ``root``.

    Parameters
    ----------
    root : path
        The shared data folder (holding ``cartridge/``).
    spacing_um : float, keyword-only
        Spacing kept (um).
    cache_dir : path, optional, keyword-only
        Keeps the preprocessed arrays (``.npz``, keyed by file size, mtime and spacing) between runs.
    studies : tuple of str, keyword-only
        Which of the known folders to read.
    """
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.cartridge.normalise import normalisation_key
    from ballistic.io.x3p import read_x3p

    root = Path(root)
    norm = normalisation_key()
    items = [it for it in _real_index(root) if it[0] in studies]
    if not items:
        raise FileNotFoundError(f"no labelled real cartridge scans under {root / 'cartridge'}")
    out = []
    for study, firearm, case, p in items:
        st = p.stat()
        key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{spacing_um}|{norm}".encode()).hexdigest()[:20]
        f = Path(cache_dir) / f"real-{key}.npy" if cache_dir else None
        if f is not None and f.is_file():
            h = np.load(f)
        else:
            s = preprocess_cartridge(read_x3p(p))
            h = resample(s, spacing_um=spacing_um).heights.astype(np.float32)
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(f, lambda fh: np.save(fh, h))
        out.append(RealScan(p.stem, study, firearm, case, Surface(h.astype(np.float64), spacing_um,
                                                                   {"source": p.name})))
    return out


# ------------------------------------------------------------------------------------------ synthetic

def _synth_range(args) -> list[np.ndarray]:
    from ballistic.cartridge.breech_face import submitted_as_processed
    from ballistic.cartridge.synth import fire, synthetic_firearm

    seeds, n_firings, spacing_um = args
    out = []
    for fs in seeds:
        fa = synthetic_firearm(int(fs))
        # normalised as every submitted scan is, so the synthetic and the real training views share one
        # normalisation (the benchmark's distractors go through the same function)
        hs = [submitted_as_processed(fire(fa, j, spacing_um=spacing_um)).heights for j in range(n_firings)]
        out.append(np.stack(_pad_same(hs)).astype(np.float16))
    return out


def _pad_same(arrs: list[np.ndarray]) -> list[np.ndarray]:
    n = max(max(a.shape) for a in arrs)
    res = []
    for a in arrs:
        b = np.full((n, n), np.nan, dtype=np.float32)
        oy, ox = (n - a.shape[0]) // 2, (n - a.shape[1]) // 2
        b[oy:oy + a.shape[0], ox:ox + a.shape[1]] = a
        res.append(b)
    return res


def synthetic_pool(n_firearms: int, n_firings: int, *, seed0: int = SYNTH_TRAIN_SEED0, spacing_um: float = 25.0,
                   workers: int = 2, cache_dir: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """Synthetic firings (float16, NaN outside; shape (n_firearms, n_firings, n, n)) of firearms
    ``seed0 .. seed0 + n_firearms - 1`` (:mod:`ballistic.cartridge.synth`), at ``spacing_um``, each
    normalised by :func:`~ballistic.cartridge.breech_face.preprocess_cartridge` as a processed scan."""
    from ballistic.cartridge import synth
    from ballistic.cartridge.normalise import normalisation_key

    version = getattr(synth, "SYNTH_VERSION", "synth/1")
    key = hashlib.sha256(f"{version}|{n_firearms}|{n_firings}|{seed0}|{spacing_um}|{normalisation_key()}"
                         .encode()).hexdigest()[:20]
    f = Path(cache_dir) / f"synth-{key}.npy" if cache_dir else None
    if f is not None and f.is_file():
        return np.load(f)
    seeds = np.arange(seed0, seed0 + n_firearms)
    chunks = [(seeds[i:i + 50], n_firings, spacing_um) for i in range(0, n_firearms, 50)]
    res: list[np.ndarray] = []
    it = None
    if progress:
        from tqdm import tqdm
        it = tqdm(total=n_firearms, desc="synthetic firearms", unit="firearm", leave=False)
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as ex:
            for r in ex.map(_synth_range, chunks):
                res += r
                if it is not None:
                    it.update(len(r))
    else:
        for c in chunks:
            r = _synth_range(c)
            res += r
            if it is not None:
                it.update(len(r))
    if it is not None:
        it.close()
    n = max(a.shape[-1] for a in res)
    P = np.full((n_firearms, n_firings, n, n), np.nan, dtype=np.float16)
    for i, a in enumerate(res):
        o = (n - a.shape[-1]) // 2
        P[i, :, o:o + a.shape[-2], o:o + a.shape[-1]] = a
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(f, lambda fh: np.save(fh, P))
    return P


# ------------------------------------------------------------------------------------------ augmentation

@dataclass(frozen=True)
class AugmentConfig:
    """Which casework effects to simulate (each on with its probability inside :func:`augment`)."""

    rotation: bool = True
    centre_jitter_px: float = 1.0
    contact: bool = True
    dropout: bool = True
    noise: bool = True
    resolution: bool = True        # another instrument: blur, calibration scale
    refilter: bool = True          # another pipeline: extra high-pass

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(**{f.name: (0.0 if f.name == "centre_jitter_px" else False) for f in fields(cls)})

    def without(self, *names: str) -> "AugmentConfig":
        bad = [n for n in names if n not in {f.name for f in fields(self)}]
        if bad:
            raise ValueError(f"unknown augmentation(s) {bad}")
        return replace(self, **{n: (0.0 if n == "centre_jitter_px" else False) for n in names})


def _nan_blur(z: np.ndarray, sigma: float) -> np.ndarray:
    m = np.isfinite(z)
    z0 = np.where(m, z, 0.0).astype(np.float32)
    mf = m.astype(np.float32)
    k = int(2 * math.ceil(3 * sigma) + 1)
    a = cv2.GaussianBlur(z0, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    b = cv2.GaussianBlur(mf, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m & (b > 1e-3), a / np.maximum(b, 1e-6), np.nan)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def augment(z: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, *,
            geometry: tuple[float, float, float] | None = None) -> np.ndarray:
    """One random casework-like variant of a breech face (heights at 25 um, NaN = missing); input not mutated.

    ``geometry``: (cy, cx, radius) of the annulus in pixels of ``z`` when already known.
    """
    z = np.array(z, dtype=np.float32, copy=True)
    ny, nx = z_shape0 = z.shape
    if cfg.resolution:
        if rng.random() < 0.5:                       # calibration of another instrument: +-3 %
            f = float(rng.uniform(0.97, 1.03))
            m = np.isfinite(z).astype(np.float32)
            size = (max(8, int(round(nx * f))), max(8, int(round(ny * f))))
            zz = cv2.resize(np.where(m > 0, z, 0.0), size, interpolation=cv2.INTER_LINEAR)
            mm = cv2.resize(m, size, interpolation=cv2.INTER_LINEAR)
            z = np.where(mm > 0.99, zz / np.maximum(mm, 1e-6), np.nan).astype(np.float32)
            ny, nx = z.shape
        if rng.random() < 0.5:                       # coarser lateral resolution
            z = _nan_blur(z, float(rng.uniform(0.4, 1.2)))
    if cfg.refilter and rng.random() < 0.4:          # another long-wavelength cut-off (150-400 um)
        z = z - np.nan_to_num(_nan_blur(z, float(rng.uniform(3.0, 8.0))))
    m = np.isfinite(z)
    if not m.any():
        return z
    sd = float(np.nanstd(z)) or 1.0
    yy, xx = np.mgrid[0:ny, 0:nx]
    if geometry is not None and z.shape == z_shape0:
        cy, cx, r_out = geometry
    else:
        cy, cx, r_out = annulus_centre(Surface(z, 25.0)) if m.sum() >= 3 else (ny / 2, nx / 2, min(ny, nx) / 2)
    if cfg.contact and rng.random() < 0.7:           # partial contact: weaker impression, lost where weakest
        a = _smooth_field(rng, z.shape, float(rng.uniform(6.0, 20.0)))
        amp = np.clip(1.0 + float(rng.uniform(0.1, 0.45)) * a, 0.15, 1.6)
        z = z * amp
        if rng.random() < 0.5:
            q = float(rng.uniform(0.03, 0.2))
            z = np.where(a < np.quantile(a[m], q), np.nan, z)
    if cfg.dropout:
        ang = np.arctan2(yy - cy, xx - cx)
        if rng.random() < 0.35:                      # a missing sector
            a0, w = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.2, 1.6))
            d = np.angle(np.exp(1j * (ang - a0)))
            z = np.where(np.abs(d) < w / 2, np.nan, z)
        if rng.random() < 0.25:                      # a straight cut (scan window, cmcR-style crop)
            a0 = float(rng.uniform(0, 2 * math.pi))
            off = float(rng.uniform(0.6, 0.95)) * r_out
            z = np.where((xx - cx) * math.cos(a0) + (yy - cy) * math.sin(a0) > off, np.nan, z)
        if rng.random() < 0.4:                       # blobs
            b = _smooth_field(rng, z.shape, float(rng.uniform(2.0, 6.0)))
            z = np.where(b > float(rng.uniform(1.6, 2.6)), np.nan, z)
        if rng.random() < 0.3:                       # eroded rims (outer edge, aperture edge)
            mm = np.isfinite(z).astype(np.uint8)
            k = int(rng.integers(1, 5))
            mm = cv2.erode(mm, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
            z = np.where(mm > 0, z, np.nan)
        if rng.random() < 0.2:                       # speckle
            z = np.where(rng.random(z.shape) < float(rng.uniform(0.005, 0.05)), np.nan, z)
    if cfg.noise:
        if rng.random() < 0.7:
            z = z + rng.standard_normal(z.shape).astype(np.float32) * float(rng.uniform(0.02, 0.35)) * sd
        if rng.random() < 0.2:                       # spikes
            sp = rng.random(z.shape) < float(rng.uniform(1e-4, 2e-3))
            z = np.where(sp, z + rng.choice([-1.0, 1.0], z.shape) * float(rng.uniform(3, 8)) * sd, z)
    return z.astype(np.float32)


def make_view(z: np.ndarray, rng: np.random.Generator | None, cfg: AugmentConfig, grid: PolarGrid, *,
              geometry: tuple[float, float, float] | None = None) -> np.ndarray:
    """Augmented polar input (2, n_r, n_theta) of heights ``z`` at ``grid.spacing_um`` (NaN = missing);
    no augmentation when ``rng`` is None."""
    if rng is not None:
        z = augment(z, rng, cfg, geometry=geometry)
    m = np.isfinite(z)
    if m.sum() < 64:
        return np.zeros(grid.shape, dtype=np.float32)
    cy, cx = polar_centre(Surface(z, grid.spacing_um))
    rot = 0.0
    if rng is not None:
        if cfg.centre_jitter_px:
            cy, cx = cy + float(rng.normal(0, cfg.centre_jitter_px)), cx + float(rng.normal(0, cfg.centre_jitter_px))
        if cfg.rotation:
            rot = float(rng.uniform(0, 2 * math.pi))
    zp, mp = grid.sample(normalise_heights(z), m, cy, cx, rotation_rad=rot)
    return np.stack([zp * np.minimum(mp, 1.0), np.clip(mp, 0.0, 1.0)]).astype(np.float32)


def cartesian_view(z: np.ndarray, rng: np.random.Generator | None, cfg: AugmentConfig, size: int = 168, *,
                   geometry: tuple[float, float, float] | None = None) -> np.ndarray:
    """Ablation input (2, size, size): the Cartesian image centred on the annulus, rotated when augmenting."""
    if rng is not None:
        z = augment(z, rng, cfg, geometry=geometry)
    m = np.isfinite(z)
    if m.sum() < 64:
        return np.zeros((2, size, size), dtype=np.float32)
    cy, cx = polar_centre(Surface(z, 25.0))
    rot = float(rng.uniform(0, 360)) if (rng is not None and cfg.rotation) else 0.0
    A = cv2.getRotationMatrix2D((cx, cy), rot, 1.0)
    A[0, 2] += size / 2 - cx
    A[1, 2] += size / 2 - cy
    zn = np.where(m, normalise_heights(z), 0.0).astype(np.float32)
    zz = cv2.warpAffine(zn, A, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    mm = cv2.warpAffine(m.astype(np.float32), A, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return np.stack([zz, np.clip(mm, 0, 1)]).astype(np.float32)
