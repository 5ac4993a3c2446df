"""The descriptor registry: ballistic finds the learned descriptor of models/ through an entry point, never
imports it, and falls back to the polar-FFT descriptor (with the reason logged) when it cannot load."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

import ballistic
from ballistic.errors import DescriptorError
from ballistic.retrieval import registry
from ballistic.retrieval.descriptor import DescriptorModel, PolarFFTDescriptor
from ballistic.retrieval.registry import (DEFAULT_DESCRIPTOR, DESCRIPTOR_ENV, DESCRIPTOR_GROUP,
                                          available_descriptors, default_descriptor, load_descriptor)

ROOT = Path(__file__).resolve().parents[1]


def test_listing_descriptors_loads_neither_torch_nor_models_and_the_default_is_phase():
    code = ("import sys, ballistic, ballistic.cli, ballistic.bench.retrieval, ballistic.retrieval.search;"
            "ballistic.available_descriptors(); ballistic.load_descriptor('polar');"
            "bad = [m for m in ('torch', 'models') if m in sys.modules];"
            "print(bad, ballistic.default_descriptor().name); sys.exit(1 if bad else 0)")
    env = {k: v for k, v in __import__("os").environ.items() if k != DESCRIPTOR_ENV}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("[] bf-polar-phase/1?") and DEFAULT_DESCRIPTOR == "phase"


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=DESCRIPTOR_GROUP)}
    assert eps.get("learned") == "models.breech_face.descriptor:learned_descriptor"
    assert {"learned", "polar", "phase"} <= set(available_descriptors())


def test_load_by_name_and_unknown_name():
    assert isinstance(load_descriptor("polar"), PolarFFTDescriptor)
    assert load_descriptor("polar") is load_descriptor("polar")                  # loaded once, shared
    assert load_descriptor("polar", n_bands=8) is not load_descriptor("polar")   # options: a new one
    with pytest.raises(DescriptorError, match="unknown descriptor 'nope'.*learned"):
        load_descriptor("nope")


def test_default_follows_the_setting(monkeypatch):
    monkeypatch.delenv(DESCRIPTOR_ENV, raising=False)
    d = default_descriptor()
    assert d is load_descriptor(DEFAULT_DESCRIPTOR) and ballistic.default_descriptor() is d
    assert hasattr(d, "query_vectors")                    # the default searches rotations by query expansion
    monkeypatch.setenv(DESCRIPTOR_ENV, "polar")
    assert isinstance(default_descriptor(), PolarFFTDescriptor)
    monkeypatch.setenv(DESCRIPTOR_ENV, "polra")
    with pytest.raises(DescriptorError, match="'polra'.*unknown.*available"):
        default_descriptor()


def test_learned_by_setting(monkeypatch):
    pytest.importorskip("torch", reason="torch is a runtime dependency of models/")
    monkeypatch.setenv(DESCRIPTOR_ENV, "learned")
    d = default_descriptor()
    assert isinstance(d, DescriptorModel) and d.name.startswith("bf-learned/1?weights=") and d.dim == 128


class _BrokenEntryPoint:
    name, value = "learned", "models.breech_face.descriptor:learned_descriptor"

    def load(self):
        raise ModuleNotFoundError("No module named 'torch'")


def test_falls_back_to_polar_when_the_learned_descriptor_cannot_load(monkeypatch, caplog):
    monkeypatch.setenv(DESCRIPTOR_ENV, "learned")
    monkeypatch.setattr(registry, "_entry_points", lambda: {"learned": _BrokenEntryPoint()})
    monkeypatch.setattr(registry, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="ballistic.retrieval.registry"):
        d = default_descriptor()
    assert isinstance(d, PolarFFTDescriptor)
    assert "falling back to the polar-FFT descriptor" in caplog.text and "torch" in caplog.text
    with pytest.raises(DescriptorError, match="failed to load.*torch"):
        load_descriptor("learned")


def test_falls_back_to_polar_when_the_weights_are_absent(monkeypatch, caplog, tmp_path):
    pytest.importorskip("torch", reason="torch is a runtime dependency of models/")
    import models.breech_face.descriptor as md

    monkeypatch.setenv(DESCRIPTOR_ENV, "learned")
    monkeypatch.setattr(md, "DEFAULT_WEIGHTS", tmp_path / "absent.pt")
    monkeypatch.setattr(registry, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="ballistic.retrieval.registry"):
        d = default_descriptor()
    assert isinstance(d, PolarFFTDescriptor)
    assert "absent.pt: no such weights file" in caplog.text
