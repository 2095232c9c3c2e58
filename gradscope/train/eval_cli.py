"""Compute sample-quality metrics (FID / IS / KID, or mode coverage) for a checkpoint of a run.

Prints the numbers and stores them as JSON in ``RUN_DIR/eval/step_XXXXXXXX.json``
(or ``--json PATH``); the run's own tables are not modified.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gradscope.train.config import INCEPTION_WEIGHTS_HELP, check_inception_weights


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gradscope eval`` arguments."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by gradscope run")
    parser.add_argument("--checkpoint", metavar="STEP", type=int, default=None,
                        help="step of the checkpoint to evaluate (default: the newest)")
    parser.add_argument("--samples", metavar="N", type=int, default=None,
                        help="generated samples (default: the run's --eval-samples)")
    parser.add_argument("--extractor", default="auto", metavar="{auto,digits,mnist,inception}",
                        help="feature extractor: the digit classifier of digits and mnist, Inception (optional library) "
                             "elsewhere, with a fallback to the digits one")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help=INCEPTION_WEIGHTS_HELP + "; default: the run's --inception-weights when that file "
                             "still exists")
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,mps}", help="where to generate")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the dataset files are (default: the run's --data-dir)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="where to write the numbers (default: RUN_DIR/eval/step_<STEP>.json)")


def evaluate_checkpoint(run_dir: str | Path, step: int | None = None, *, samples: int | None = None,
                        extractor: str = "auto", device: str = "auto",
                        data_dir: str | None = None,
                        inception_weights: str | None = None) -> tuple[int, int, dict[str, float]]:
    """``(step, samples, metrics)`` of a run's checkpoint; the EMA generator when the run kept one.

    ``inception_weights`` must name an existing file when given; otherwise the
    run's own ``inception_weights`` is used if that file is still there.
    ``extractor="inception"`` is a demand: when Inception cannot be had this raises
    a ``ValueError`` naming the run (``"auto"`` falls back to the digits classifier with
    a warning). A named extractor on a 2D point set (measured by mode coverage) is refused.

    Examples
    --------
    >>> step, samples, metrics = evaluate_checkpoint("runs/demo", samples=1000)  # doctest: +SKIP
    """
    import torch

    from gradscope._checks import check_choice, check_int_at_least
    from gradscope.data import load_dataset
    from gradscope.metrics import evaluate_generator
    from gradscope.metrics.extractor import EXTRACTORS, get_extractor
    from gradscope.metrics.inception import InceptionUnavailable
    from gradscope.train.checkpoint import find_checkpoint, load_checkpoint
    from gradscope.train.distributed import resolve_device
    from gradscope.train.networks import build_networks
    from gradscope.train.rundir import config_of_run

    check_choice("--extractor", extractor, EXTRACTORS)
    weights = check_inception_weights(inception_weights)
    config = config_of_run(run_dir)
    if weights is None and config.inception_weights is not None and Path(config.inception_weights).is_file():
        weights = config.inception_weights
    if samples is not None:
        check_int_at_least("--samples", samples, 2)
    target = resolve_device(device)
    payload = load_checkpoint(find_checkpoint(run_dir, step), map_location="cpu")
    dataset = load_dataset(config.dataset, data_dir=data_dir or config.data_dir,
                           image_size=config.image_size, seed=config.seed)
    if extractor != "auto" and dataset.kind == "points":
        raise ValueError(f"{run_dir}: --extractor {extractor} does not apply to {config.dataset}, a 2D point set "
                         "(its metrics are mode coverage, with no feature extractor); leave --extractor out")
    if extractor == "inception":  # asked for by name: refused here, before any sample is drawn, if unavailable
        try:
            get_extractor("inception", device=target, inception_weights=weights, fallback=False)
        except InceptionUnavailable as exc:
            raise ValueError(f"{run_dir}: --extractor inception, but Inception is unavailable: {exc}; "
                             "--extractor auto gives the digits classifier's numbers instead") from None
    _, generator = build_networks(config, dataset)
    generator.load_state_dict(payload["G_ema"] if payload.get("G_ema") is not None else payload["G"])
    count = samples or config.eval_samples
    with torch.random.fork_rng():
        metrics = evaluate_generator(generator.to(target), dataset, n_samples=count, extractor=extractor,
                                     device=target, seed=config.seed, inception_weights=weights,
                                     fallback=extractor != "inception")
    return int(payload["step"]), count, {k: float(v) for k, v in metrics.items()}


def execute(args: argparse.Namespace) -> int:
    """Evaluate, print and store the numbers."""
    from gradscope.record.storage import write_json
    from gradscope.train.progress import format_metrics
    from gradscope.train.rundir import EVAL_DIR

    started = time.perf_counter()
    step, count, metrics = evaluate_checkpoint(args.run_dir, args.checkpoint, samples=args.samples,
                                               extractor=args.extractor, device=args.device,
                                               data_dir=args.data_dir, inception_weights=args.inception_weights)
    target = Path(args.json) if args.json else Path(args.run_dir) / EVAL_DIR / f"step_{step:08d}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, {"step": step, "samples": count, "extractor": args.extractor, "metrics": metrics})
    print(f"step {step}: {format_metrics(metrics)}  ({time.perf_counter() - started:.1f} s; {target})")
    print(json.dumps(metrics, sort_keys=True))
    return 0
