"""Plain JSON values from library results (numpy scalars and arrays, non-finite floats -> null)."""
from __future__ import annotations

import numpy as np

__all__ = ["jsonable"]


def jsonable(x):
    """Plain JSON types only: dict keys become str, numpy arrays lists, numpy scalars Python numbers,
    NaN and infinities None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
