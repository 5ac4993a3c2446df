"""The one error hierarchy of the library.

Every typed error that :mod:`ballistic` raises subclasses :class:`BallisticError` through one of four
kinds, and callers decide from the kind, never from a message or from an incidental base class::

    BallisticError
    +-- InputError (also ValueError)            the caller's file, parameters or data cannot be used as given
    |   +-- LimitError                           a size or count over a safety limit (refused before allocation)
    |   |   +-- X3PLimitError (also X3PError)
    |   |   +-- ImageLimitError
    |   +-- X3PError                             an .x3p file cannot be read
    |   |   +-- X3PFormatError, X3PChecksumError, X3PLimitError
    |   +-- ImageFormatError                     a 2D image cannot be decoded
    |   +-- SearchRecordError                    a search record that does not parse or verify
    |   +-- ScaleOutConfigError (also ScaleOutError)   settings that cannot work
    +-- ProcessingError (also ValueError)       valid input on which a method step finds nothing usable
    |   +-- PreprocessError                      no breech face, too little measured data ...
    |   |   +-- FiringPinError
    |   +-- BulletError                          no striation direction, grooves or signature ...
    |   +-- DescriptorError                      no descriptor for this surface
    +-- StateError (also RuntimeError)          stored state or the machinery behind it, not the caller's data
        +-- IndexStateError                      an index snapshot missing, foreign or corrupt
        +-- ScaleOutError                        shards and distributed re-ranking
            +-- ShardUnavailableError, RerankError, ScaleOutConfigError

How a caller uses the kinds (the service does exactly this, ``api/errors.py``):

* ``InputError`` and ``ProcessingError`` are *data errors*: the same input fails the same way again, so
  a job is never retried on them and an HTTP request gets a 4xx with the message (``LimitError`` 413,
  the others 422);
* ``StateError`` is about the system (a snapshot, a shard, a lost worker): retrying after repair or
  after the cluster recovers can succeed (HTTP 503);
* ``InputError`` and ``ProcessingError`` stay ``ValueError`` so that code written before this
  hierarchy (``except ValueError``) keeps working; ``StateError`` stays ``RuntimeError`` likewise.

Every message says what to do about the problem.
"""
from __future__ import annotations

__all__ = [
    "BallisticError",
    "InputError",
    "LimitError",
    "ProcessingError",
    "StateError",
    # input
    "X3PError",
    "X3PFormatError",
    "X3PChecksumError",
    "X3PLimitError",
    "ImageFormatError",
    "ImageLimitError",
    "SearchRecordError",
    # processing
    "PreprocessError",
    "FiringPinError",
    "BulletError",
    "DescriptorError",
    # state
    "IndexStateError",
    "ScaleOutError",
    "ScaleOutConfigError",
    "ShardUnavailableError",
    "RerankError",
]


# --------------------------------------------------------------------------- kinds
class BallisticError(Exception):
    """Base class of every typed error raised by :mod:`ballistic`."""


class InputError(BallisticError, ValueError):
    """The caller's input (a file, a parameter, data handed in) cannot be used as given."""


class LimitError(InputError):
    """An input exceeds a safety limit (points, pixels, members, bytes); refused before allocation."""


class ProcessingError(BallisticError, ValueError):
    """A method step ran on valid input and found nothing it can use (no breech face, no grooves...)."""


class StateError(BallisticError, RuntimeError):
    """Stored state or the machinery behind it (index snapshots, shards, workers) is not as required.

    Not a property of the caller's data: retrying after a repair or a recovery can succeed.
    """


# --------------------------------------------------------------------------- input: files
class X3PError(InputError):
    """Base class of every error raised while reading an ``.x3p`` file."""


class X3PFormatError(X3PError):
    """The input is not a readable x3p: not a zip, truncated, bad XML, missing members,
    unsupported data type or layout."""


class X3PChecksumError(X3PError):
    """An MD5 checksum declared in the file does not match the stored bytes."""


class X3PLimitError(X3PError, LimitError):
    """A size declared in the file exceeds a safety limit (points, members, bytes, ratio)."""


class ImageLimitError(LimitError):
    """A 2D image is larger than the allowed number of pixels."""


class ImageFormatError(InputError):
    """A 2D image cannot be decoded or has an unsupported pixel format."""


class SearchRecordError(InputError):
    """A record that cannot be read: wrong format, missing fields, or content not matching its hash."""


# --------------------------------------------------------------------------- processing
class PreprocessError(ProcessingError):
    """A scan could not be preprocessed (too little valid data, no breech face found...)."""


class FiringPinError(PreprocessError):
    """No firing-pin impression could be found or compared (not a raw scan, crater
    outside the field of view, too little measured data)."""


class BulletError(ProcessingError):
    """A bullet scan, profile or signature cannot be processed as asked."""


class DescriptorError(ProcessingError):
    """A descriptor cannot be computed (empty surface, settings that do not fit)."""


# --------------------------------------------------------------------------- state
class IndexStateError(StateError):
    """A saved index is missing, corrupt or incompatible with this code (rebuild it from stored descriptors
    with :meth:`ballistic.retrieval.index.VectorIndex.rebuild`)."""


class ScaleOutError(StateError):
    """Base class of the errors of the sharded index and the distributed re-ranking."""


class ScaleOutConfigError(ScaleOutError, InputError):
    """Settings that cannot work (unknown backend, Ray missing, no auth token for a remote cluster...).

    An :class:`InputError` first: the settings are wrong, retrying does not help."""


class ShardUnavailableError(ScaleOutError):
    """A shard did not answer (actor dead for good, its node lost with no room to restart it, or timed out
    after the configured retries). Raised instead of returning results without that shard's vectors.

    Attributes
    ----------
    shard : str
        Name of the shard.
    """

    def __init__(self, shard: str, message: str) -> None:
        super().__init__(f"shard {shard!r} unavailable: {message}")
        self.shard = shard


class RerankError(ScaleOutError):
    """A re-ranking batch failed on every retry (worker or node lost each time)."""
