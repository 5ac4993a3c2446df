"""The one error hierarchy (ballistic/errors.py): every typed error has exactly one kind, and is defined there."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ballistic
import ballistic.errors as E

KINDS = (E.InputError, E.ProcessingError, E.StateError)
TYPED = [getattr(E, n) for n in E.__all__
         if isinstance(getattr(E, n), type) and getattr(E, n) not in (E.BallisticError, *KINDS, E.LimitError)]


@pytest.mark.parametrize("cls", TYPED, ids=lambda c: c.__name__)
def test_every_typed_error_has_a_kind(cls):
    assert issubclass(cls, E.BallisticError)
    kinds = [k for k in KINDS if issubclass(cls, k)]
    # one kind each; the only double is ScaleOutConfigError, an input error of the scale-out machinery
    assert len(kinds) == 1 or (cls is E.ScaleOutConfigError and kinds == [E.InputError, E.StateError])


def test_kinds_keep_the_builtin_bases_older_callers_catch():
    for cls in (E.InputError, E.LimitError, E.ProcessingError, E.X3PError, E.PreprocessError, E.BulletError,
                E.DescriptorError, E.SearchRecordError, E.ScaleOutConfigError):
        assert issubclass(cls, ValueError), cls
    for cls in (E.StateError, E.IndexStateError, E.ShardUnavailableError, E.RerankError):
        assert issubclass(cls, RuntimeError) and not issubclass(cls, ValueError), cls
    assert issubclass(E.X3PLimitError, E.LimitError) and issubclass(E.X3PLimitError, E.X3PError)
    assert issubclass(E.ImageLimitError, E.LimitError) and issubclass(E.FiringPinError, E.PreprocessError)


def test_shard_unavailable_names_the_shard():
    e = E.ShardUnavailableError("s3", "actor died")
    assert e.shard == "s3" and "s3" in str(e) and "actor died" in str(e)


def test_errors_carry_structured_attributes_not_only_a_message():
    """Callers (the service) act on ``reason`` codes and a LimitError's limit, never on message text."""
    e = E.PreprocessError("reworded any time", reason="breech_face_not_planar")
    assert e.reason == "breech_face_not_planar" and E.BulletError("x").reason is None
    assert all(isinstance(k, str) and v for k, v in E.REASONS.items())
    with pytest.raises(KeyError, match="REASONS"):
        E.DescriptorError("x", reason="made_up")
    lim = E.ImageLimitError("too big", limit="max_pixels", value=81e6, maximum=1e6, shape=(9000, 9000))
    assert (lim.limit, lim.value, lim.maximum, lim.shape, lim.reason) == ("max_pixels", 81e6, 1e6, (9000, 9000), None)
    assert E.X3PLimitError("no details").limit is None


def test_no_exception_class_is_defined_outside_errors_py():
    """One hierarchy: a new typed error goes into ballistic/errors.py under its kind."""
    root = Path(ballistic.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id == "Warning")
                    for b in node.bases):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert offenders == []
