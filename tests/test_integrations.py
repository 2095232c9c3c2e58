"""Recording where people train, end to end with the real libraries: a plain loop (``watch``), Lightning
(automatic optimization with gradient accumulation, a manual two-optimizer GAN, a resumed fit) and the
Hugging Face ``Trainer``. Each checks that the recorded steps are the optimizer steps and that one
recorded gradient norm equals one computed independently of the recorder.

The recorder's set of watched module types grows, so layers are checked as a superset of the
``nn.Linear`` paths, never as an exact list.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

import gradscope
from gradscope.integrations import watch

# Statistics every watched Linear layer has on every recorded step.
CORE_STATS = ("act_in_var", "grad_out_norm", "grad_w_raw_norm", "lecun_ratio")


def _linear_paths(module: nn.Module) -> set[str]:
    return {name for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def _value(layers: pd.DataFrame, stat: str, step: int, layer: str, **where: str) -> float:
    rows = layers[(layers["stat"] == stat) & (layers["step"] == step) & (layers["layer"] == layer)]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, (stat, step, layer, where, rows)
    return float(rows["value"].iloc[0])


def _assert_core_rows(layers: pd.DataFrame, net: str, module: nn.Module, steps: list[int], phase: str) -> None:
    rows = layers[(layers["net"] == net) & (layers["phase"] == phase)]
    assert sorted(rows["step"].unique().tolist()) == steps
    assert _linear_paths(module) <= set(rows["layer"])
    core = rows[rows["layer"].isin(_linear_paths(module)) & rows["stat"].isin(CORE_STATS)]
    assert len(core) == len(steps) * len(_linear_paths(module)) * len(CORE_STATS)
    assert core["value"].map(math.isfinite).all()


def _gradient_norm(module: nn.Module, name: str, loss_of) -> float:
    """``||d loss / d module.<name>||`` on a detached copy of the parameters (no hook, no .grad involved)."""
    params = {key: value.detach().clone().requires_grad_(True) for key, value in module.named_parameters()}
    loss = loss_of(lambda *args: functional_call(module, params, args))
    (grad,) = torch.autograd.grad(loss, [params[name]])
    return float(grad.norm())


# --- no optional library ------------------------------------------------------------------------
def test_optional_libraries_are_not_imported_and_a_missing_one_names_its_extra():
    code = ("import sys, gradscope, gradscope.integrations\n"
            "gradscope.watch, gradscope.integrations.default_models\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'pytorch_lightning', 'transformers', 'accelerate', 'tensorboard'}))\n"
            "sys.modules['lightning'] = sys.modules['transformers'] = None  # importing them now fails\n"
            "for name in ('GradscopeCallback', 'GradscopeTrainerCallback'):\n"
            "    try:\n"
            "        getattr(gradscope.integrations, name)\n"
            "    except ImportError as exc:\n"
            "        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "[]",
        "GradscopeCallback needs PyTorch Lightning: pip install 'lightning>=2.1'",
        "GradscopeTrainerCallback needs Hugging Face transformers: pip install 'transformers>=4.41' 'accelerate>=1.1'"]


def test_watch_marks_one_step_per_optimizer_step_and_records_the_true_gradient(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = torch.randn(8, 16, 4)  # 4 optimizer steps of 2 accumulated micro-batches
    with watch(model, opt, out=tmp_path / "run", alerts=[]) as rec:
        for i, x in enumerate(batches):
            (model(x).pow(2).mean() / 2).backward()
            if i % 2 == 1:
                if i == 7:
                    with rec.paused():  # the independent computation must not be recorded itself
                        expected = _gradient_norm(model, "2.weight", lambda f: sum(
                            f(x).pow(2).mean() / 2 for x in batches[6:]))
                opt.step()
                opt.zero_grad()
    run = gradscope.load_run(tmp_path / "run")
    _assert_core_rows(run.layers, "model", model, [1, 2, 3, 4], "train")
    assert _value(run.layers, "grad_w_raw_norm", 4, "2") == pytest.approx(expected, rel=1e-5)
    assert run.status["state"] == "done"


def test_watch_a_gan_numbers_steps_by_iteration_and_records_the_first_d_update():
    torch.manual_seed(1)
    D = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    G = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    opt_d, opt_g = torch.optim.Adam(D.parameters(), 1e-3), torch.optim.Adam(G.parameters(), 1e-3)
    first_d_grad = {}
    with watch({"D": D, "G": G}, {"d": opt_d, "g": opt_g}, alerts=[]) as rec:
        for iteration in range(1, 4):
            for _ in range(2):  # n_dis = 2: both D updates belong to this iteration
                opt_d.zero_grad()
                real, fake = torch.randn(16, 2), G(torch.randn(16, 3)).detach()
                (nn.functional.softplus(-D(real)).mean() + nn.functional.softplus(D(fake)).mean()).backward()
                first_d_grad.setdefault(iteration, float(D[2].weight.grad.norm()))
                opt_d.step()
            opt_g.zero_grad()
            nn.functional.softplus(-D(G(torch.randn(16, 3)))).mean().backward()
            opt_g.step()
        layers = rec.run().layers
    assert set(zip(layers["step"], layers["phase"])) == {(s, p) for s in (1, 2, 3) for p in ("d", "g")}
    _assert_core_rows(layers, "D", D, [1, 2, 3], "d")
    _assert_core_rows(layers, "G", G, [1, 2, 3], "g")
    for iteration, grad in first_d_grad.items():
        assert _value(layers, "grad_w_raw_norm", iteration, "2", net="D", phase="d") == pytest.approx(grad, rel=1e-6)


def test_watch_rejects_bad_arguments_and_marks_a_failed_loop(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizers must be a torch.optim.Optimizer or a non-empty dict"):
        with watch(model, "sgd"):
            pass
    with pytest.raises(ValueError, match="unknown recorder option 'evry'; valid: .*every"):
        with watch(model, opt, evry=2):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with watch(model, opt, out=tmp_path / "run", alerts=[]):
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
            raise RuntimeError("boom")
    status = gradscope.load_run(tmp_path / "run").status
    assert (status["state"], status["step"]) == ("failed", 1)
    opt.step()  # the hooks are gone: stepping after the block records nothing and raises nothing


def test_torch_compile_records_what_eager_records_given_the_compiled_or_the_original_module():
    # aot_eager: dynamo + AOTAutograd as inductor uses them, without compiling kernels (seconds, not a minute).
    def record(compile_: bool, give_compiled: bool) -> pd.DataFrame:
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        net = torch.compile(model, backend="aot_eager") if compile_ else model
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with watch(net if give_compiled else model, opt, alerts=[]) as rec:
            for x in torch.randn(3, 32, 6):
                opt.zero_grad()
                net(x).pow(2).mean().backward()
                opt.step()
            return rec.run().layers.set_index(["step", "phase", "net", "layer", "stat"])["value"]

    torch._dynamo.reset()
    eager = record(False, False)
    assert {"0", "2"} <= set(eager.index.get_level_values("layer"))
    for give_compiled in (False, True):
        compiled = record(True, give_compiled)
        assert compiled.index.equals(eager.index)  # layer names as written, no "_orig_mod." prefix
        pd.testing.assert_series_equal(compiled, eager, rtol=1e-4, atol=1e-7)


# --- PyTorch Lightning ------------------------------------------------------------------------------
def _lightning():
    return pytest.importorskip("lightning.pytorch")


def _fit_kwargs(tmp_path, **extra):
    return dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0, **extra)


def _regression_module(pl, fail_at: int | None = None):
    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

        def training_step(self, batch, batch_idx):
            if batch_idx == fail_at:
                raise RuntimeError("boom")
            x, y = batch
            return (self.net(x) - y).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Regression()


def _loader(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def test_lightning_automatic_optimization_with_gradient_accumulation(tmp_path):
    pl = _lightning()
    from gradscope.integrations import GradscopeCallback

    class Reference(pl.Callback):
        """Recomputes the last update's gradient from the weights and both micro-batches."""

        def __init__(self):
            self.batches, self.expected = [], None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.batches = (self.batches + [batch])[-2:]

        def on_before_optimizer_step(self, trainer, module, optimizer):
            if trainer.global_step == 5:  # the 6th and last update
                with recorder.recorder.paused():
                    # Lightning divides each micro-batch's loss by accumulate_grad_batches
                    self.expected = _gradient_norm(module.net, "2.weight", lambda f: sum(
                        (f(x) - y).pow(2).mean() / 2 for x, y in self.batches))

    recorder, reference = GradscopeCallback(alerts=[]), Reference()
    module = _regression_module(pl)
    trainer = pl.Trainer(max_steps=6, accumulate_grad_batches=2, callbacks=[recorder, reference],
                         **_fit_kwargs(tmp_path))
    trainer.fit(module, _loader())
    assert trainer.global_step == 6 and recorder.out == tmp_path / "gradscope"
    run = gradscope.load_run(recorder.out)
    _assert_core_rows(run.layers, "net", module.net, [1, 2, 3, 4, 5, 6], "train")  # default: the child "net"
    assert _value(run.layers, "grad_w_raw_norm", 6, "2") == pytest.approx(reference.expected, rel=1e-5)
    assert (run.status["state"], run.status["step"]) == ("done", 6)
    assert run.config["integration"] == "lightning" and run.config["phases"] == ["train"]


def test_lightning_manual_optimization_gan_with_two_optimizers_and_tensorboard(tmp_path):
    pl = _lightning()
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    from gradscope.integrations import GradscopeCallback

    class GAN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.gen = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
            self.disc = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
            self.d_grads = []

        def training_step(self, batch, batch_idx):
            real = batch[0]
            opt_d, opt_g = self.optimizers()
            fake = self.gen(torch.randn(len(real), 3))
            loss_d = nn.functional.softplus(-self.disc(real)).mean() + \
                nn.functional.softplus(self.disc(fake.detach())).mean()
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            self.d_grads.append(float(self.disc[2].weight.grad.norm()))
            opt_d.step()
            # A fresh sample: a forward pass counts for the update in which it ran (as in gradscope run)
            loss_g = nn.functional.softplus(-self.disc(self.gen(torch.randn(len(real), 3)))).mean()
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            opt_g.step()

        def configure_optimizers(self):
            return [torch.optim.Adam(self.disc.parameters(), 1e-3), torch.optim.Adam(self.gen.parameters(), 1e-3)]

    logger = TensorBoardLogger(str(tmp_path), name="logs")
    recorder = GradscopeCallback({"D": "disc", "G": "gen"}, phases=("d", "g"), tensorboard=True, alerts=[])
    module = GAN()
    trainer = pl.Trainer(max_steps=8, callbacks=[recorder], **{**_fit_kwargs(tmp_path), "logger": logger})
    trainer.fit(module, _loader())
    assert trainer.global_step == 8  # Lightning counts both optimizers' steps: 4 batches
    run = gradscope.load_run(recorder.out)
    assert recorder.out == tmp_path / "logs" / "version_0" / "gradscope"
    _assert_core_rows(run.layers, "D", module.disc, [1, 2, 3, 4], "d")
    _assert_core_rows(run.layers, "G", module.gen, [1, 2, 3, 4], "g")
    assert _value(run.layers, "grad_w_raw_norm", 4, "2", net="D", phase="d") == pytest.approx(module.d_grads[-1],
                                                                                               rel=1e-6)
    assert list((recorder.out / "tensorboard").glob("events.out.tfevents.*"))
    assert run.status["state"] == "done" and run.config["automatic_optimization"] is False


def test_lightning_resume_continues_the_run_a_failure_is_marked_and_bad_phases_are_refused(tmp_path):
    pl = _lightning()
    from gradscope.integrations import GradscopeCallback

    out, checkpoint = tmp_path / "scope", tmp_path / "half.ckpt"
    module = _regression_module(pl)
    first = pl.Trainer(max_steps=2, callbacks=[GradscopeCallback(out=out, alerts=[])], **_fit_kwargs(tmp_path))
    first.fit(module, _loader())
    first.save_checkpoint(str(checkpoint))
    second = pl.Trainer(max_steps=4, callbacks=[GradscopeCallback(out=out, alerts=[])], **_fit_kwargs(tmp_path))
    second.fit(module, _loader(), ckpt_path=str(checkpoint))
    layers = gradscope.load_run(out).layers
    assert sorted(layers["step"].unique().tolist()) == [1, 2, 3, 4]
    assert not layers.duplicated(["step", "phase", "net", "layer", "stat"]).any()

    again = pl.Trainer(max_steps=1, callbacks=[GradscopeCallback(out=out)], **_fit_kwargs(tmp_path))
    with pytest.raises(ValueError, match="already holds a gradscope run; pass another out= or overwrite=True"):
        again.fit(_regression_module(pl), _loader())
    wrong = pl.Trainer(max_steps=1, callbacks=[GradscopeCallback(out=tmp_path / "x", phases=("d", "g"))],
                       **_fit_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"phases names 2 phase\(s\) \(d, g\) but Regression has 1 optimizer"):
        wrong.fit(_regression_module(pl), _loader())

    failing = _regression_module(pl, fail_at=2)
    callback = GradscopeCallback(out=tmp_path / "failed", alerts=[])
    with pytest.raises(RuntimeError, match="boom"):
        pl.Trainer(max_steps=5, callbacks=[callback], **_fit_kwargs(tmp_path)).fit(failing, _loader())
    status = gradscope.load_run(tmp_path / "failed").status
    assert (status["state"], status["step"], status["error"]) == ("failed", 2, "boom")
    assert callback.recorder is None


# --- Hugging Face transformers ------------------------------------------------------------------
def test_hf_trainer_with_gradient_accumulation(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from gradscope.integrations import GradscopeTrainerCallback

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            ids = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    class Reference(transformers.TrainerCallback):
        """The gradient the optimizer is about to apply (after the Trainer's clipping), per step."""

        def __init__(self):
            self.grads = {}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads[state.global_step + 1] = float(model.lm_head.weight.grad.norm())

    torch.manual_seed(0)
    # Untied: a weight shared with the embedding reports its gradient under one of its two modules only.
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=4, gradient_accumulation_steps=2,
                                          per_device_train_batch_size=4, use_cpu=True, report_to=[],
                                          save_strategy="no", logging_steps=1, disable_tqdm=True,
                                          dataloader_num_workers=0)
    recorder, reference = GradscopeTrainerCallback(alerts=[]), Reference()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[reference, recorder])
    trainer.train()
    assert trainer.state.global_step == 4 and recorder.out == tmp_path / "hf" / "gradscope"
    run = gradscope.load_run(recorder.out)
    _assert_core_rows(run.layers, "model", model, [1, 2, 3, 4], "train")
    for step in (1, 4):
        assert _value(run.layers, "grad_w_raw_norm", step, "lm_head") == pytest.approx(reference.grads[step],
                                                                                     rel=1e-5)
    losses = run.scalars[run.scalars["name"] == "loss"]
    assert losses["step"].tolist() == [1, 2, 3, 4] and losses["value"].map(math.isfinite).all()
    assert (run.status["state"], run.status["step"]) == ("done", 4)
    assert run.config["integration"] == "transformers"
