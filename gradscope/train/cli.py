"""Train a GAN under a normalization of D with the recorder attached, into a run directory.

Every flag is a field of :class:`gradscope.train.RunConfig` and a key of the
``--config`` TOML file; precedence, lowest first: defaults, ``--preset``, the
file, the flags. Exit codes: 0 done, 2 usage error (also: --out is in use by
another gradscope process), 3 diverged, 4 the run directory could not be
written (disk full, quota, read-only; status failed), 130 / 143 interrupted by
SIGINT / SIGTERM (a checkpoint was written; ``--resume DIR`` continues
exactly).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from gradscope.train.config import AMP_MODES, DEVICES, FIELD_NAMES, LOSSES, OPTIMIZERS, RUNTIME_FIELDS, RunConfig, \
    resolve_config


#: The exit codes, at the end of ``gradscope run --help`` (:mod:`gradscope.train.api` has the details).
EPILOG = ("exit codes: 0 done; 1 crashed (a bug: status failed); 2 usage error, or --out is in use by another "
          "gradscope process (named by pid); 3 diverged (non-finite losses or weights; status diverged); "
          "4 the run directory could not be written: disk full, quota or read-only (status failed with the "
          "reason, temporary files removed); 130 / 143 interrupted by SIGINT / SIGTERM after a checkpoint "
          "(--resume continues)")


def _choices() -> dict[str, tuple[str, ...]]:
    """Flags whose value is one of a fixed list: listed in --help, checked by RunConfig (one-line errors)."""
    from gradscope.data import DATASETS
    from gradscope.init import INIT_SCHEMES
    from gradscope.models import ARCHS
    from gradscope.norms import NORMS
    from gradscope.train.presets import PRESETS

    return {"norm": NORMS, "init": INIT_SCHEMES, "dataset": DATASETS, "arch": ARCHS, "loss": LOSSES,
            "device": DEVICES, "amp": AMP_MODES, "optimizer": OPTIMIZERS, "preset": tuple(PRESETS)}


def _lenient(kind: type) -> Any:
    """Convert when possible, else pass the text on so RunConfig reports it in one line."""
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            return text
    convert.__name__ = kind.__name__
    return convert


def _shown_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "off" if not value else "on"
    return str(value)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gradscope run`` flags (one per :class:`RunConfig` field, plus --config/--resume/--overwrite)."""
    parser.epilog = EPILOG
    choices = _choices()
    for f in dataclasses.fields(RunConfig):
        help_text = f.metadata["help"]
        if f.default is not None:
            help_text += f" (default: {_shown_default(f.default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.name == "record":
            parser.add_argument("--no-record", action="store_false", **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        elif f.name in choices:
            kwargs["metavar"] = "{" + ",".join(choices[f.name]) + "}"
        elif f.name == "betas":
            kwargs["metavar"] = "B1,B2"
        elif f.name == "eval_metrics":
            kwargs["metavar"] = "M1,M2"
        annotation = str(f.type)
        if annotation.startswith("int"):
            kwargs["type"] = _lenient(int)
        elif annotation.startswith("float"):
            kwargs["type"] = _lenient(float)
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file of settings; keys mirror the flags (e.g. lr-d = 1e-4); flags override it")
    runtime = ", ".join("--" + name.replace("_", "-") for name in sorted(RUNTIME_FIELDS - {"out"}))
    parser.add_argument("--resume", metavar="DIR", default=argparse.SUPPRESS,
                        help="continue the run in DIR exactly, from its newest checkpoint that is intact and "
                             "belongs to DIR's run (a damaged or foreign newer one is renamed *.rejected, with "
                             "a warning); a run stopped before its first checkpoint starts again from step 0. "
                             f"Only {runtime} may be given with it")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="replace the run already in --out (only gradscope's files are removed; without it "
                             "nothing on disk is overwritten)")


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig fields set on the command line (flags left out are absent)."""
    return {name: value for name, value in vars(args).items() if name in FIELD_NAMES}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated :class:`RunConfig` a parsed ``gradscope run`` command line describes (not for --resume)."""
    return resolve_config(given_values(args), getattr(args, "config", None))


def execute(args: argparse.Namespace) -> int:
    """Run (or resume) the training; return the exit code."""
    from gradscope.train.api import EXIT_SIGNAL_BASE, resume, train
    from gradscope.train.disk import StorageError

    values = given_values(args)
    try:
        overwrite = getattr(args, "overwrite", False)
        if getattr(args, "resume", None) is not None:
            if getattr(args, "config", None) is not None or overwrite:
                raise ValueError("--resume continues a run as configured; drop --config and --overwrite")
            result = resume(args.resume, **values)
        else:
            result = train(config_from_args(args), overwrite=overwrite)
    except StorageError as exc:  # one line, not a traceback: nothing to debug, the disk needs room
        print(f"gradscope run: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        where = getattr(args, "resume", None) or values.get("out")
        hint = f"; gradscope run --resume {where} continues it (from step 0 if it has no checkpoint)" if where else ""
        print(f"gradscope run: interrupted before a checkpoint could be written{hint}", file=sys.stderr)
        return EXIT_SIGNAL_BASE + 2
    return result.exit_code
