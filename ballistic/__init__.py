"""ballistic: open ballistic comparison and correlation (pure library: no HTTP, no DB, no torch at import)."""
from ballistic.surface import Surface

__version__ = "0.1.0"
__all__ = ["Surface", "__version__"]
