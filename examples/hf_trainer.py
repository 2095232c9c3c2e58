"""Record a Hugging Face ``transformers.Trainer`` run with ``GradscopeTrainerCallback``.

A 2-layer GPT-2 (built from a config, no download) learns to copy random token sequences;
the callback records the model into ``<output_dir>/gradscope`` -- per-layer activation and
gradient statistics, spectral norms of every attention and MLP projection (``Conv1D`` weights
included) -- together with the Trainer's logged loss, gradient norm and learning rate.
Gradient accumulation gives one recorded step per optimizer update.

    pip install -e ".[transformers]"
    python examples/hf_trainer.py --out runs/hf                   # 60 updates, some 10 s on a CPU
    gradscope plot runs/hf/gradscope --out plots
    python examples/hf_trainer.py --tiny                          # 2 updates (the test suite)

``GRADSCOPE_EXAMPLE_TINY=1`` has the same effect as ``--tiny``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

import gradscope

try:
    import transformers
except ImportError:  # pragma: no cover - the message says what to install
    raise SystemExit("this example needs transformers and accelerate: pip install -e '.[transformers]'") from None

from gradscope.integrations import GradscopeTrainerCallback


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the labels are the inputs (a language model learning to copy)."""

    def __init__(self, n: int, length: int = 16, vocab: int = 64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer updates")
    parser.add_argument("--every", type=int, default=5, help="record every N updates")
    parser.add_argument("--out", default=None, help="the Trainer's output_dir (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="2 updates, for a quick test")
    args = parser.parse_args(argv)
    if args.tiny or os.environ.get("GRADSCOPE_EXAMPLE_TINY") == "1":
        args.steps, args.every = 2, 1
    out = Path(args.out or tempfile.mkdtemp(prefix="gradscope-hf-"))

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    training = transformers.TrainingArguments(
        output_dir=str(out), max_steps=args.steps, gradient_accumulation_steps=2, per_device_train_batch_size=8,
        learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no", logging_steps=args.every,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=training,
                                   train_dataset=Tokens(16 * args.steps),
                                   callbacks=[GradscopeTrainerCallback(every=args.every)])
    trainer.train()

    run = gradscope.load_run(out / "gradscope")
    sigma = run.layers[run.layers["stat"] == "sigma_fwd"]
    last = sigma[sigma["step"] == sigma["step"].max()].set_index("layer")["value"]
    losses = run.scalars[run.scalars["name"] == "loss"]
    print(f"recorded {run.layers['step'].nunique()} updates into {out / 'gradscope'}")
    print("loss by update:", ", ".join(f"{s}: {v:.3f}" for s, v in zip(losses["step"], losses["value"])))
    print("largest spectral norms (sigma_fwd) at the last recorded update:")
    print(last.sort_values(ascending=False).head(6).to_string(float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
