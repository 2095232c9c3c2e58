"""Inception-v3 features through torch-fidelity (optional: ``pip install --no-deps torch-fidelity==0.4.0``).

gradscope does not ship an Inception network: it uses torch-fidelity's
``FeatureExtractorInceptionV3`` (the TF-compatible port that FID / IS / KID
numbers in the literature are computed with), taking its 2048-d pool
features for FID / KID and its 1008 bias-free logits ("logits_unbiased",
torch-fidelity's choice for IS).

Two practical points:

- ``import torch_fidelity`` imports torchvision (for its CLIP / VGG / DINOv2
  extractors). Where torchvision is missing or cannot be imported beside the
  installed torch, the Inception module alone (which needs only torch) is
  loaded from the installed package without running the package's
  ``__init__``; nothing is left registered in ``sys.modules``.
- Weights: an explicit file (``inception_weights=PATH``, the CLI's
  ``--inception-weights``), else the file torch-fidelity downloads into the
  torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded there if
  asked. Files are first read with ``torch.load(weights_only=True)`` so that
  only a plain state dict (tensors, no code) is ever handed to the library.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradscope._install import FIDELITY

__all__ = ["InceptionExtractor", "InceptionUnavailable", "inception_weights_file", "torch_fidelity_inception_class"]

PACKAGE = "torch_fidelity"
MODULE = "torch_fidelity.feature_extractor_inceptionv3"
FEATURES = ("2048", "logits_unbiased")


class InceptionUnavailable(RuntimeError):
    """The Inception extractor cannot be built here; the message says why in one line."""


def _first_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``: warnings about unavailability stay one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _import_without_package_init() -> types.ModuleType:
    """Load torch-fidelity's Inception module while skipping the package ``__init__`` (torchvision)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE} is not installed")
    ours = [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]
    saved = {name: sys.modules.pop(name) for name in ours}
    shell = types.ModuleType(PACKAGE)
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules[PACKAGE] = shell
    try:
        return importlib.import_module(MODULE)
    finally:
        # The loaded module keeps references to what it imported; the half-initialised
        # package must not stay visible to a later, ordinary `import torch_fidelity`.
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        sys.modules.update(saved)


def torch_fidelity_inception_class() -> tuple[type, str]:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` class and its default weights URL.

    Raises
    ------
    InceptionUnavailable
        When torch-fidelity is not installed or its Inception module cannot be loaded.
    """
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == PACKAGE:
            raise InceptionUnavailable(f"torch-fidelity is not installed ({FIDELITY})") from None
        try:  # most likely torchvision, needed only by torch-fidelity's other extractors
            module = _import_without_package_init()
        except Exception as inner:  # noqa: BLE001 - report any failure of the library as unavailability
            reason = _first_line(inner)
            raise InceptionUnavailable(f"torch-fidelity's Inception module cannot be imported ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - e.g. torchvision present but broken beside this torch
        try:
            module = _import_without_package_init()
        except Exception:  # noqa: BLE001
            raise InceptionUnavailable(f"torch-fidelity cannot be imported ({_first_line(exc)})") from None
    return module.FeatureExtractorInceptionV3, module.URL_INCEPTION_V3


def inception_weights_file(explicit: str | os.PathLike[str] | None, url: str, *, download: bool) -> Path:
    """Locate (or download into torch hub's cache) the Inception weights file and check it holds only tensors.

    Parameters
    ----------
    explicit : path, optional
        A weights file given by the user; used as is when set.
    url : str
        torch-fidelity's weights URL; its basename is the file name in the hub cache.
    download : bool
        Whether a missing file may be downloaded (torch hub, with progress).

    Raises
    ------
    InceptionUnavailable
        Missing file (and no download), failed download, or a file that is not a plain state dict.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise InceptionUnavailable(f"inception weights file {str(path)!r} does not exist")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if not path.is_file():
            if not download:
                raise InceptionUnavailable(
                    f"no Inception weights in {str(path.parent)!r} (pass --inception-weights PATH)")
            try:
                torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - offline, proxy, HTTP error: all mean "not available"
                raise InceptionUnavailable(
                    f"Inception weights could not be downloaded ({_first_line(exc)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InceptionUnavailable(f"{str(path)!r} is not a plain weights file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InceptionUnavailable(f"{str(path)!r} does not hold a state dict of tensors")
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


class InceptionExtractor:
    """Inception-v3 (torch-fidelity) as a gradscope feature extractor.

    ``features(images)`` takes images in [-1, 1], (N, 1 or 3, H, W), quantises
    them to uint8 as a saved PNG would be (torch-fidelity's input format),
    repeats a single channel to RGB, and returns the 2048-d pool features and
    the 1008 bias-free logits, float32 on :attr:`device`.

    Parameters
    ----------
    weights : path, optional
        Explicit weights file; default: torch-fidelity's file in the torch hub cache.
    device : str or torch.device
        Where the network runs.
    download : bool
        Allow downloading the default weights when missing.

    Raises
    ------
    InceptionUnavailable
        With a one-line reason, when the library or the weights are not available.
    """

    family = "inception"

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                 *, download: bool = False) -> None:
        cls, url = torch_fidelity_inception_class()
        path = inception_weights_file(weights, url, download=download)
        try:
            network: Any = cls("inception-v3-compat", list(FEATURES), feature_extractor_weights_path=str(path))
        except Exception as exc:  # noqa: BLE001 - wrong shapes etc.: the file is not torch-fidelity's Inception
            raise InceptionUnavailable(f"torch-fidelity rejected {str(path)!r} ({_first_line(exc)})") from None
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.weights_path = path
        self.name = f"inception-v3-torch-fidelity-{_file_digest(path)}"

    @torch.no_grad()
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """2048-d pool features and 1008 logits (float32, on :attr:`device`)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        pixels = ((images.to(self.device, torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        pool, logits = self.network(pixels.contiguous())
        return pool, logits
