"""The architecture holds: import contracts (import-linter, pyproject.toml) and a light ``import ballistic``.

The contracts run here so that the README's test command, and so ``.ci/run``, enforce them. Each
contract is also shown to break on a bad import planted in a copy of the tree: a contract that
cannot fail would check nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
CONTRACTS = {c["id"]: c["name"] for c in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the tree in cwd, not the installed one
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "pyproject.toml"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _broken(out: str) -> set[str]:
    """Ids of the contracts reported broken (names are matched, wrapped over lines as printed)."""
    flat = " ".join(out.split())
    return {cid for cid, name in CONTRACTS.items() if " ".join(f"{name} BROKEN".split()) in flat}


def test_import_contracts_hold():
    assert LINT.exists(), "lint-imports missing: pip install -e '.[test]' (import-linter is in the test extra)"
    r = _lint(ROOT)
    assert r.returncode == 0 and not _broken(r.stdout), r.stdout + r.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in r.stdout, r.stdout


@pytest.mark.parametrize("where,line,contract", [
    ("ballistic/surface.py", "import api.settings", "pure-library"),
    ("ballistic/preprocess/filters.py", "import torch", "pure-library"),
    ("models/__init__.py", "import api.settings", "models-below-api"),
    ("ballistic/io/csv.py", "from ballistic.bench.cartridge import read_labels", "ballistic-layers"),
    ("ballistic/retrieval/index.py", "from ballistic.retrieval.sharded import ShardedIndex", "ballistic-acyclic"),
    ("ballistic/cartridge/cmc/params.py", "from ballistic.cartridge.cmc.cells import compare_cells", "cmc-steps"),
    ("ballistic/cartridge/breech_face.py", "from ballistic.cartridge.firing_pin import find_firing_pin", "cartridge"),
    ("ballistic/bullet/profile.py", "from ballistic.bullet.sam import bullet_score", "bullet-steps"),
    ("api/jobs/correlate.py", "from api.services.jobs import create_job", "api-layers"),
    ("api/routes/jobs.py", "from api.jobs.correlate import run_correlation_job", "routes-no-jobs"),
    ("api/index.py", "from api.jobs.context import JobContext", "api-acyclic"),
], ids=lambda v: v if isinstance(v, str) and v in CONTRACTS else None)
def test_a_bad_import_breaks_its_contract(tmp_path, where, line, contract):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "static", "templates", "*.nbi", "*.nbc")
    for pkg in ("ballistic", "api", "models"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert _lint(tmp_path).returncode == 0               # the copy is as clean as the tree
    target = tmp_path / where
    target.write_text(target.read_text() + f"\n{line}  # planted by tests/test_architecture.py\n")
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout
    assert contract in _broken(r.stdout), r.stdout


def test_import_ballistic_is_light_and_the_api_lazy():
    code = """
import json, sys
import ballistic
heavy = ("numba", "scipy", "cv2", "faiss", "matplotlib", "torch", "PIL", "ray", "api", "models", "sklearn")
before = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
sub = sorted(m for m in sys.modules if m.startswith("ballistic."))
f = ballistic.compare_pair
out = {"heavy": before, "submodules": sub, "compare_pair": f.__module__,
       "loaded": "ballistic.cartridge.cmc.pair" in sys.modules, "all": sorted(ballistic.__all__),
       "dir": dir(ballistic)}
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(r.stdout)
    assert out["heavy"] == []                    # numpy only: no numba, scipy, faiss, matplotlib, torch, api ...
    assert out["submodules"] == ["ballistic.errors", "ballistic.surface"]
    assert out["compare_pair"] == "ballistic.cartridge.cmc.pair" and out["loaded"]
    assert out["dir"] == out["all"]
    import ballistic
    for name in ballistic.__all__:               # every public name resolves
        assert getattr(ballistic, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'compare'"):
        ballistic.compare  # noqa: B018
