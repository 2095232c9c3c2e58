"""gradscope: spectral normalization in GANs, made runnable, observable and checkable."""
from __future__ import annotations

__version__ = "0.1.0"
