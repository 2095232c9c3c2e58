"""What one training run is: :class:`RunConfig`, validated when it is built.

Every field is also a ``gradscope run`` flag (``lr_d`` -> ``--lr-d``) and a key
of a ``--config`` TOML file; the help text of each flag is the field's
``metadata["help"]``, so the three stay in step. Precedence, lowest first:
field defaults, ``--preset``, the TOML file, flags on the command line.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradscope._checks import check_choice, check_int_at_least, check_positive

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOSSES: tuple[str, ...] = ("hinge", "ns", "wgan-gp")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
AMP_MODES: tuple[str, ...] = ("none", "bf16")
#: ``adam`` is the reference's; ``sgd`` (plain, no momentum) shows gradients that Adam's per-weight
#: rescaling hides (E1).
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
POINT_DATASETS: tuple[str, ...] = ("ring8", "grid25")
#: Values of ``image_size``, ``batch_size``, ``ema`` and ``width`` when they are not given, per dataset.
#: The default job (mnist) keeps the reference SNDCGAN geometry (32x32 inputs: every conv of D sees at
#: least its kernel's extent, so sigma_op >= sigma_fwd as C6 assumes) at a quarter of its channels, with a
#: moving average of G, so that it fits a few minutes on 2 CPU cores (measured: README, "Quick start").
#: digits keeps its native 8 pixels, where D's deepest convs see 2x2 and 1x1 maps (kept for fast tests).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"image_size": 32, "batch_size": 64, "ema": 0.99, "width": 0.25},
    "digits": {"image_size": 8, "batch_size": 32, "ema": 0.99},
}
#: The same for every other dataset (the reference's batch 64, no moving average, the dataset's own size);
#: ``width`` defaults to the reference's 1 (and is 1 whatever the dataset for archs other than sndcgan).
GENERIC_DEFAULTS: dict[str, Any] = {"image_size": None, "batch_size": 64, "ema": 0.0}
REFERENCE_WIDTH = 1.0

#: Fields that say where and how a run executes, not what it computes: they may
#: differ between an interrupted run and its continuation.
RUNTIME_FIELDS: frozenset[str] = frozenset(
    {"out", "device", "data_dir", "download", "workers", "quiet", "iterations", "inception_weights", "tensorboard",
     "export_final"})
#: What ``--inception-weights`` must hold; named in its help and in the error for a missing file.
INCEPTION_WEIGHTS_FILE = "torch-fidelity's pt_inception-2015-12-05 weights (weights-inception-2015-12-05-6726825d.pth)"
INCEPTION_WEIGHTS_HELP = (f"local file of {INCEPTION_WEIGHTS_FILE}, for Inception FID / IS / KID without a "
                          "download (offline machines); default: torch hub's cache")


def _opt(default: Any, help_text: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a ``gradscope run`` training run.

    Built from keyword arguments (all optional) and validated at once: a bad
    value raises a one-line ``ValueError`` naming the valid choices. The
    ``metadata["help"]`` of every field is the ``--help`` text of its flag.

    Examples
    --------
    >>> cfg = RunConfig(norm="bssn", scale=1.4, iterations=100)
    >>> cfg.norm, cfg.lr_d, cfg.betas
    ('bssn', 0.0002, (0.5, 0.999))
    >>> RunConfig(loss="l2")
    Traceback (most recent call last):
    ...
    ValueError: unknown loss 'l2'; valid choices: 'hinge', 'ns', 'wgan-gp'
    """

    norm: str = _opt("sn", "normalization of the discriminator's layers (the generator uses batch norm)")
    init: str | None = _opt(None, "re-initialize D's weights with this scheme; default: the arch's reference "
                                  "initialization (dcgan for sndcgan, xavier for resnet and mlp)")
    scale: float = _opt(1.0, "constant c multiplying every normalized D weight (ssn, bssn, strict, sn)")
    power_schedule: str = _opt("torch", "power iteration of D's normalizations: torch (15 warm-up steps, u "
                                        "advanced inside each training forward) or authors (fjxmlzn/BSN: cold "
                                        "u, one unstored step per forward that gradients flow through, u "
                                        "advanced after each D optimizer step); authors: reshape norms only",
                               metavar="{torch,authors}")
    dataset: str = _opt("mnist", "training data; mnist, digits, ring8 and grid25 are built in, the others are "
                                 "read from --data-dir")
    arch: str | None = _opt(None, "network pair: sndcgan or resnet for images, mlp for ring8 and grid25; "
                                  "default: sndcgan, or mlp for a 2D dataset")
    d_layout: str | None = _opt(None, "block layout of the resnet discriminator: miyato (hidden channels = "
                                      "input channels; 17 convs at 128 px) or authors (fjxmlzn/BSN: hidden = "
                                      "output channels, a 1x1 shortcut in the last block too; 18 convs); "
                                      "default: authors for --preset on imagenet, else miyato",
                                metavar="{miyato,authors}")
    loss: str = _opt("hinge", "GAN loss: hinge, ns (non-saturating) or wgan-gp (gradient penalty, lambda 10)")
    iterations: int = _opt(800, "number of generator updates (each preceded by --n-dis D updates)")
    batch_size: int | None = _opt(None, "samples per batch, summed over all processes under torchrun; "
                                        "default 64 (32 for digits)")
    width: float | None = _opt(None, "channel multiplier of the sndcgan pair (kernels, strides and depth stay "
                                     "the reference's); default 0.25 for mnist, else 1")
    n_dis: int = _opt(1, "discriminator updates per generator update")
    optimizer: str = _opt("adam", "optimizer of both networks: adam, or sgd (plain, no momentum; --betas unused)")
    lr_d: float = _opt(2e-4, "learning rate of the discriminator")
    lr_g: float = _opt(2e-4, "learning rate of the generator")
    betas: tuple[float, float] = _opt((0.5, 0.999), "Adam betas of both networks, as B1,B2")
    seed: int = _opt(0, "seed of the weights, the data order and the latents")
    z_dim: int | None = _opt(None, "latent size; default 128 for images, 16 for mlp")
    image_size: int | None = _opt(None, "image side; default 8 for digits (their native size), else the "
                                        "dataset's own (32 mnist and cifar10, 48 stl10, 64 celeba, "
                                        "128 imagenet)")
    ema: float | None = _opt(None, "decay of an exponential moving average of G's weights used for samples "
                                   "and metrics (e.g. 0.999; 0 turns it off); default 0 (0.99 for mnist "
                                   "and digits)")
    eval_every: int = _opt(200, "evaluate sample quality every N iterations, at the start and at the end "
                                "(0: never)")
    eval_samples: int = _opt(1000, "generated samples per evaluation")
    eval_metrics: tuple[str, ...] = _opt(("fid", "is"), "image metrics computed at each evaluation, from fid, is, "
                                                        "kid (KID costs several times FID; gradscope eval "
                                                        "computes all three)")
    sample_every: int = _opt(200, "save a PNG grid of samples every N iterations (0: only at the end)")
    checkpoint_every: int = _opt(200, "write a checkpoint every N iterations (and at the end, and on "
                                      "Ctrl-C / SIGTERM)")
    keep_checkpoints: int = _opt(3, "how many checkpoints to keep, newest first; 0 keeps every one. --resume "
                                    "needs only the newest; keep 2 or more so that a damaged newest one falls "
                                    "back to the one before it. Each holds D, G, G's average and both "
                                    "optimizers' moments (the end of a run prints their size)", metavar="N")
    export_final: bool = _opt(False, "at the end of the run also write <out>/final.pt: the weights of D, G and "
                                     "G's average with the config, no optimizer state (about half a checkpoint; "
                                     "torch.load(..., weights_only=True) reads it); may be given with --resume")
    record: bool = _opt(True, "attach the recorder (per-layer statistics); --no-record turns it off",
                        flag="--no-record")
    record_every: int | str = _opt(1, "record the cheap per-layer statistics every N iterations, or on a "
                                      "schedule for long runs: parts P@U (every P iterations below iteration "
                                      "U) then a last period, where a period is N or logK (K iterations per "
                                      "decade), e.g. 1@1000,10@10000,100 or 1@1000,log20 (--exact-every "
                                      "keeps its own iterations)", metavar="N|SCHEDULE")
    slopes_every: int | None = _opt(None, "record the per-sample norms of grad_x D(x) on real and fake batches "
                                          "on the recorded iterations divisible by N (a multiple of an integer "
                                          "--record-every; one extra backward pass each); default: every "
                                          "recorded iteration")
    exact_every: int = _opt(200, "compute the exact spectral norms (conv operator norms) every N iterations "
                                "(0: never)")
    flush_every: int = _opt(50, "write recorded data to disk at least every N iterations")
    tensorboard: bool = _opt(False, "also write the recorded statistics and losses as TensorBoard events to "
                                    "<out>/tensorboard (pip install 'tensorboard>=2.12'); kept by --resume")
    device: str = _opt("auto", "cpu, cuda, mps, or auto (cuda when available, else cpu)")
    amp: str = _opt("none", "mixed precision on CUDA: none or bf16 (rejected on CPU, where results must "
                            "not change)")
    compile: bool = _opt(False, "torch.compile the networks (CUDA only; rejected on CPU)")
    data_dir: str | None = _opt(None, "where dataset files live; default $GRADSCOPE_DATA or "
                                      "~/.cache/gradscope/data")
    download: bool = _opt(False, "download missing cifar10 / stl10 files (with checksum verification)")
    inception_weights: str | None = _opt(None, INCEPTION_WEIGHTS_HELP + "; Inception is used for image "
                                               "datasets other than digits", metavar="PATH")
    workers: int = _opt(2, "data-loading worker processes for datasets read from files")
    out: str | None = _opt(None, "run directory; default ./runs/<dataset>-<arch>-<norm>-<loss>-s<seed>-<time>")
    quiet: bool = _opt(False, "no progress bar, no per-evaluation lines and no end-of-run summary; warnings "
                              "and errors are still printed")
    preset: str | None = _opt(None, "start from the authors' setting A, B or C (flags and --config override it; "
                                    "in the API use RunConfig.from_preset)")

    def __post_init__(self) -> None:
        from gradscope.data import DATASETS
        from gradscope.init import INIT_SCHEMES
        from gradscope.models import ARCHS, RESNET_D_LAYOUTS
        from gradscope.norms import NORMS, POWER_SCHEDULES
        from gradscope.train.presets import PRESETS

        set_ = object.__setattr__
        check_choice("norm", self.norm, NORMS)
        check_choice("dataset", self.dataset, DATASETS)
        for name, fallback in GENERIC_DEFAULTS.items():
            if getattr(self, name) is None:
                set_(self, name, DATASET_DEFAULTS.get(self.dataset, {}).get(name, fallback))
        if self.init is not None:
            check_choice("init", self.init, INIT_SCHEMES)
        points = self.dataset in POINT_DATASETS
        if self.arch is None:
            set_(self, "arch", "mlp" if points else "sndcgan")
        check_choice("arch", self.arch, ARCHS)
        if self.width is None:
            dataset_width = DATASET_DEFAULTS.get(self.dataset, {}).get("width", REFERENCE_WIDTH)
            set_(self, "width", dataset_width if self.arch == "sndcgan" else REFERENCE_WIDTH)
        set_(self, "width", float(check_positive("width", self.width)))
        if self.width != REFERENCE_WIDTH and self.arch != "sndcgan":
            raise ValueError(f"--width {self.width:g} applies to --arch sndcgan only; {self.arch} keeps width 1")
        check_choice("loss", self.loss, LOSSES)
        check_choice("device", self.device, DEVICES)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.preset is not None:
            check_choice("preset", self.preset, tuple(PRESETS))
        check_choice("power_schedule", self.power_schedule, POWER_SCHEDULES)
        if self.power_schedule == "authors" and self.norm == "strict":
            raise ValueError("--power-schedule authors applies to the reshape norms only (sn, ssn, bsn, bssn, "
                             "sn-same-gamma, sn-diff-gamma), not --norm strict")
        if self.d_layout is None:  # the authors' ImageNet ResNet when a preset (their settings) runs on imagenet
            by_preset = self.preset is not None and self.dataset == "imagenet" and self.arch == "resnet"
            set_(self, "d_layout", "authors" if by_preset else "miyato")
        check_choice("d_layout", self.d_layout, RESNET_D_LAYOUTS)
        if self.d_layout != "miyato" and self.arch != "resnet":
            raise ValueError(f"--d-layout {self.d_layout} applies to --arch resnet only; {self.arch} has one layout")
        set_(self, "scale", float(check_positive("scale", self.scale)))
        set_(self, "lr_d", float(check_positive("lr_d", self.lr_d)))
        set_(self, "lr_g", float(check_positive("lr_g", self.lr_g)))
        set_(self, "betas", _check_betas(self.betas))
        set_(self, "eval_metrics", _check_metrics(self.eval_metrics))
        check_positive("ema", self.ema, allow_zero=True)
        if not float(self.ema) < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1) (0 turns it off), got {self.ema!r}")
        set_(self, "ema", float(self.ema))
        set_(self, "record_every", _check_record_every(self.record_every))
        for name in ("iterations", "batch_size", "n_dis", "eval_samples", "flush_every"):
            check_int_at_least(name, getattr(self, name), 1)
        for name in ("seed", "eval_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                     "exact_every", "workers"):
            check_int_at_least(name, getattr(self, name), 0)
        for name in ("z_dim", "image_size", "slopes_every"):
            if getattr(self, name) is not None:
                check_int_at_least(name, getattr(self, name), 1)
        if self.inception_weights is not None:
            if not isinstance(self.inception_weights, (str, os.PathLike)) or not str(self.inception_weights):
                raise ValueError(f"inception_weights must be a file path, got {self.inception_weights!r}")
            set_(self, "inception_weights", str(self.inception_weights))
        for name in ("record", "download", "compile", "quiet", "tensorboard", "export_final"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.tensorboard and not self.record:
            raise ValueError("--tensorboard shows what the recorder records; drop --no-record or --tensorboard")
        if self.norm == "none" and self.scale != 1.0:
            raise ValueError(f"--scale {self.scale:g} needs a normalization; --norm none leaves D's weights as they are")
        plain = isinstance(self.record_every, int)
        if self.slopes_every is not None and plain and self.slopes_every % self.record_every:
            raise ValueError(f"--slopes-every {self.slopes_every} must be a multiple of --record-every "
                             f"{self.record_every}")
        if points != (self.arch == "mlp"):
            kind = "2D dataset" if points else "image dataset"
            fits = "mlp" if points else "sndcgan or resnet"
            raise ValueError(f"arch {self.arch!r} does not fit the {kind} {self.dataset!r}; use --arch {fits}")
        if points and self.image_size is not None:
            raise ValueError(f"--image-size does not apply to the 2D dataset {self.dataset!r}")

    # -- views -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready values (``betas`` as a list)."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        values["eval_metrics"] = list(self.eval_metrics)
        return values

    def identity(self) -> dict[str, Any]:
        """The values that decide what the run computes (all but :data:`RUNTIME_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RunConfig:
        """The authors' setting ``name`` (A, B or C) with ``overrides`` applied.

        ``RunConfig(preset=...)`` only labels a config; this (like ``--preset``) applies the values.

        Examples
        --------
        >>> cfg = RunConfig.from_preset("C", dataset="stl10", norm="bssn")
        >>> cfg.n_dis, cfg.betas, cfg.iterations
        (5, (0.5, 0.9), 400000)
        """
        from gradscope.train.presets import preset_values

        return cls(**{**preset_values(name, overrides.get("dataset")), **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> RunConfig:
        """Build from plain values (keys with ``_`` or ``-``); unknown keys are a ``ValueError``."""
        return cls(**normalize_keys(values, where=where))


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))


def normalize_keys(values: dict[str, Any], *, where: str = "config") -> dict[str, Any]:
    """Map ``lr-d`` style keys to field names, rejecting keys that are not fields."""
    out = {}
    for key, value in values.items():
        name = str(key).strip().replace("-", "_")
        if name not in FIELD_NAMES:
            valid = ", ".join(n.replace("_", "-") for n in FIELD_NAMES)
            raise ValueError(f"unknown key {key!r} in {where}; valid keys: {valid}")
        out[name] = tuple(value) if name in ("betas", "eval_metrics") and isinstance(value, list) else value
    return out


def _check_betas(betas: Any) -> tuple[float, float]:
    if isinstance(betas, str):
        betas = betas.split(",")
    try:
        pair = tuple(float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be two numbers B1,B2 in [0, 1), got {betas!r}") from None
    if len(pair) != 2 or not all(0.0 <= b < 1.0 for b in pair):
        raise ValueError(f"betas must be two numbers B1,B2 in [0, 1), got {betas!r}")
    return pair  # type: ignore[return-value]


def _check_record_every(value: Any) -> int | str:
    """An int for every N iterations (as config.json always held), else the schedule's canonical text."""
    from gradscope.record.schedule import RecordEvery

    return RecordEvery.of(value, what="record_every").setting()


def _check_metrics(metrics: Any) -> tuple[str, ...]:
    from gradscope.metrics import METRICS

    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"eval_metrics must name at least one of {', '.join(METRICS)}")
    for name in names:
        check_choice("eval metric", name, METRICS)
    return tuple(dict.fromkeys(names))


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file of run settings (keys mirror the flags); return field-named values.

    Examples
    --------
    A file holding ``norm = "bssn"`` and ``lr-d = 1e-4`` gives
    ``{"norm": "bssn", "lr_d": 0.0001}``.
    """
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {file} is not valid TOML: {exc}") from None
    return normalize_keys(raw, where=str(file))


def resolve_config(flags: dict[str, Any], config_file: str | os.PathLike[str] | None = None) -> RunConfig:
    """Merge field defaults < preset < TOML file < command-line ``flags`` into a :class:`RunConfig`.

    ``flags`` holds only the values given on the command line (field names as keys).
    The preset is looked up with the dataset that the file or the flags choose.
    """
    from gradscope.train.presets import preset_values

    file_values = load_config_file(config_file) if config_file is not None else {}
    merged = {**file_values, **normalize_keys(flags, where="the command line")}
    preset = merged.get("preset")
    base = preset_values(preset, merged.get("dataset")) if preset is not None else {}
    return RunConfig(**{**base, **merged})


def check_inception_weights(path: str | os.PathLike[str] | None) -> str | None:
    """``path`` (``~`` expanded) when it is an existing file or ``None``; otherwise a one-line ``ValueError``.

    Checked when a run or an evaluation starts rather than in :class:`RunConfig`,
    so that a run directory copied to another machine can still be read.

    Examples
    --------
    >>> check_inception_weights(None) is None
    True
    >>> check_inception_weights("/nonexistent/inception.pth")
    Traceback (most recent call last):
    ...
    ValueError: --inception-weights /nonexistent/inception.pth: no such file; expected a local file of torch-fidelity's pt_inception-2015-12-05 weights (weights-inception-2015-12-05-6726825d.pth)
    """
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--inception-weights {path}: no such file; expected a local file of {INCEPTION_WEIGHTS_FILE}")
    return str(file)


def default_run_dir(config: RunConfig, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<dataset>-<arch>-<norm>-<loss>-s<seed>-<YYYYmmdd-HHMMSS>``, made unique with a suffix."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{config.dataset}-{config.arch}-{config.norm}-{config.loss}-s{config.seed}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
