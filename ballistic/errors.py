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
    |   +-- BulletError                          no grooves or signature as asked ...
    |   |   +-- UnusableLandError                a scan with no usable land at all (empty, too small, too coarse)
    |   +-- DescriptorError                      no descriptor for this surface
    +-- StateError (also RuntimeError)          stored state or the machinery behind it, not the caller's data
        +-- IndexStateError                      an index snapshot missing, foreign or corrupt
        +-- PreparedViewsError                   stored comparison views damaged, foreign or stale
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

Every message says what to do about the problem. A caller that needs more than the kind reads the error's
structured attributes, never its message: every error may carry a ``reason`` (a short stable code naming what
was not found, e.g. ``"breech_face_not_planar"``; the codes are listed in :data:`REASONS`), and a
:class:`LimitError` carries the limit it hit (``limit``, ``value``, ``maximum`` and, for grids and images,
``shape``).
"""
from __future__ import annotations

__all__ = [
    "REASONS",
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
    "PairModelError",
    # processing
    "PreprocessError",
    "FiringPinError",
    "BulletError",
    "UnusableLandError",
    "DescriptorError",
    # state
    "IndexStateError",
    "PreparedViewsError",
    "ScaleOutError",
    "ScaleOutConfigError",
    "ShardUnavailableError",
    "RerankError",
    "SearchCancelled",
]


#: The ``reason`` codes the library attaches to its errors (what was not found), with their meaning. A code
#: names a situation, not a message: messages may be reworded, codes stay.
REASONS: dict[str, str] = {
    "breech_face_centre_sparse": "too few measured points in the centre of a 3D scan to find the breech face",
    "breech_face_not_planar": "no flat (planar) primer region in a 3D scan",
    "breech_face_too_small": "the flat primer region of a 3D scan is too small",
    "breech_face_no_annulus": "the firing-pin hole and the margins leave no breech-face area",
    "primer_edge_not_found": "the primer edge was not found in a photo, so its scale is unknown",
    "image_uncalibrated": "a photo without a pixel spacing and without primer segmentation to measure one",
    "image_masked_view": "a photo that is mostly invalid pixels: a masked or rendered view, not a photograph",
    "primer_ring_not_found": "no bright region enclosed by a dark primer ring in a photo",
    "primer_disc_not_found": "the bright disc inside the dark primer ring is missing or off-centre",
    "descriptor_no_band": "no radial band of the breech face has enough measured points for a descriptor",
}


# --------------------------------------------------------------------------- kinds
class BallisticError(Exception):
    """Base class of every typed error raised by :mod:`ballistic`.

    Parameters
    ----------
    *args
        The message (as for :class:`Exception`).
    reason : str, optional, keyword-only
        A stable code from :data:`REASONS` naming the situation, for callers that act on it (the service
        words its message for users from it); None when the kind says enough.

    Attributes
    ----------
    reason : str or None
    """

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None and reason not in REASONS:
            raise KeyError(f"unknown error reason {reason!r}; add it to ballistic.errors.REASONS")
        self.reason = reason


class InputError(BallisticError, ValueError):
    """The caller's input (a file, a parameter, data handed in) cannot be used as given."""


class LimitError(InputError):
    """An input exceeds a safety limit (points, pixels, members, bytes); refused before allocation.

    Parameters
    ----------
    *args
        The message.
    limit : str, optional, keyword-only
        The limit that was hit, by the name of the keyword that sets it (``"max_points"``,
        ``"max_pixels"``, ``"max_members"``, ``"max_uncompressed_bytes"``, ``"max_compression_ratio"``,
        ``"max_xml_bytes"`` (fixed), ``"max_upload_bytes"``).
    value : float, optional, keyword-only
        What the input declares or holds, in the unit of the limit; None when unknown.
    maximum : float, optional, keyword-only
        The limit in force; None when unknown.
    shape : tuple of int, optional, keyword-only
        The declared grid, ``(rows, columns)`` (an x3p's ``(SizeY, SizeX)``, an image's ``(height, width)``),
        when the limit is on points or pixels and the size is known.
    reason : str, optional, keyword-only
        See :class:`BallisticError`.
    """

    def __init__(self, *args: object, limit: str | None = None, value: float | None = None,
                 maximum: float | None = None, shape: tuple[int, ...] | None = None,
                 reason: str | None = None) -> None:
        super().__init__(*args, reason=reason)
        self.limit = limit
        self.value = value
        self.maximum = maximum
        self.shape = None if shape is None else tuple(int(n) for n in shape)


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


class PairModelError(InputError):
    """A pair model or the features handed to it cannot be used: not a pair-model file, a feature
    missing or not finite, an unknown feature transform, or too few pairs of a class to fit."""


# --------------------------------------------------------------------------- processing
class PreprocessError(ProcessingError):
    """A scan could not be preprocessed (too little valid data, no breech face found...)."""


class FiringPinError(PreprocessError):
    """No firing-pin impression could be found or compared (not a raw scan, crater
    outside the field of view, too little measured data)."""


class BulletError(ProcessingError):
    """A bullet scan, profile or signature cannot be processed as asked."""


class UnusableLandError(BulletError):
    """The scan holds no usable land engraved area at all: no measured points, too few measured rows across
    the land, or sampled too coarsely to resolve striae. Weak striae, an ambiguous striation direction or
    grooves that cannot be found are *not* this error: :func:`ballistic.bullet.signature.land_signature` /
    :func:`~ballistic.bullet.signature.land_signatures` then fall back to a documented default and flag the
    signature (``Signature.low_confidence``).

    A :class:`ProcessingError` (through :class:`BulletError`): the file is a valid scan, the method finds no
    land in it; like every bullet error it is never retried."""


class _NoStableCrosscut(BulletError):
    """Private: :func:`ballistic.bullet.crosscut.choose_crosscut` found no two neighbouring crosscuts to
    compare (the data, not the parameters); :func:`~ballistic.bullet.signature.land_signature` catches it and
    averages the whole scan instead. Not part of the public hierarchy (not in ``__all__``)."""


class DescriptorError(ProcessingError):
    """A descriptor cannot be computed (empty surface, settings that do not fit)."""


# --------------------------------------------------------------------------- state
class IndexStateError(StateError):
    """A saved index is missing, corrupt or incompatible with this code (rebuild it from stored descriptors
    with :meth:`ballistic.retrieval.index.VectorIndex.rebuild`)."""


class PreparedViewsError(StateError):
    """A stored file of prepared comparison views that cannot be served as the current ones (damaged, of
    another format, made with other settings or code, or from an older version of its scan): prepare the
    surface again from its scan and store the views again."""


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


class SearchCancelled(StateError):
    """A search was stopped by its caller (its stop event was set, e.g. the service is shutting down); it
    returned nothing. Run it again."""
