"""``Recorder``: watch any PyTorch model while it trains and store what it saw."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from gradscope._checks import check_int_at_least, check_positive
from gradscope.record.alerts import DEFAULT_RULES, AlertMonitor, AlertRule, print_alert
from gradscope.record.buffer import PackedStep, StepBuffer
from gradscope.record.families import FAMILIES, StepContext
from gradscope.record.hooks import Observer
from gradscope.record.layers import (
    Layer,
    cache_sized_chunks,
    check_name,
    discover_layers,
    normalize_models,
)
from gradscope.record.outbox import Outbox, scalar_batches
from gradscope.record.probes import hessian_norms, input_gradient_norms
from gradscope.record.reader import Run
from gradscope.record.schedule import RecordEvery, Schedule
from gradscope.record.spectral import nonfinite_norm
from gradscope.record.stats import SLOPE_SCALARS, resolve_stats
from gradscope.record.storage import RunWriter
from gradscope.record.tensorboard import INSTALL_HINT, tensorboard_available

STATE_FORMAT = 1


class Recorder:
    """Records per-layer statistics of one or more models during training.

    Parameters
    ----------
    models : nn.Module or dict of str to nn.Module
        What to watch, e.g. ``{"D": disc, "G": gen}``; a single module is named ``"model"``.
        Every ``Linear`` / ``Conv`` / ``ConvTranspose`` layer is recorded (normalized or not).
    every : int, str or RecordEvery
        Record the cheap statistics on steps divisible by ``every``, or on a :class:`RecordEvery`
        schedule for long runs (dense early, sparse later), also given as its compact text such as
        ``"1@1000,10@10000,100"`` or ``"1@1000,log20"``.
    exact_every : int, optional
        Also record exact spectral norms (``sigma_raw_*``, ``sigma_op``) on steps divisible by it,
        whether or not ``every`` records the step (such a step then holds the exact rows only).
    stats : iterable of str, optional
        Subset of :data:`gradscope.record.STATS`; default all on the active schedules.
    out : str, Path or RunWriter, optional
        Run directory (or a writer shared with the trainer). ``None`` keeps rows in memory.
    flush_every : int
        Write to disk at least every ``flush_every`` steps (also the number of ``step()`` calls).
    alerts : iterable of AlertRule, optional
        Alert rules; ``None`` uses :data:`DEFAULT_RULES`, ``[]`` disables alerts.
    hessian_every : int, optional
        Record ``hessian_top`` (``||H||_2`` of each layer's Hessian block of ``mean(net(x))``, see
        :func:`gradscope.record.probes.hessian_norms`) on steps divisible by it, for nets with one output
        per sample (or ``hessian_nets``), on the first batch the net saw in that step.
    device_sync_every : int, optional
        Copy values from the device after this many recorded steps (default ``flush_every``).
    hessian_iterations : int
        Most Lanczos steps (Hessian-vector products) per layer for ``hessian_top``.
    hessian_tol : float
        Relative residual at which a layer's ``hessian_top`` counts as converged and stops early.
    hessian_nets : iterable of str, optional
        Nets whose Hessian to probe (default: those returning one value per sample).
    slopes_every : int, optional
        :meth:`record_input_gradients` computes only on recorded steps divisible by this (a multiple
        of an int ``every``; default: every recorded step). It costs one extra input-gradient backward
        pass through the net (about 20% of an SNDCGAN GAN step on CPU), so a slower schedule keeps it
        cheap.
    operator_every : int, optional
        A convolution's ``sigma_op`` (its operator norm on its input size) advances its warm-started
        power step on recorded steps divisible by this (a multiple of an int ``every``; default
        ``10 * every``, and for a schedule every 10th step of the period in force, see
        :meth:`RecordEvery.tick`): the step is a batch-1 convolution and its transpose per layer,
        about as costly as the rest of the recorder together on a deep CNN. Linear layers'
        ``sigma_op`` and every ``sigma_fwd`` are taken every recorded step.
    tensorboard : bool
        Also write TensorBoard events to ``out/tensorboard`` (needs the ``tensorboard`` package).
    alert_printer : callable, optional
        Shows each alert event once (default: one line on stderr; e.g. ``tqdm.write``; see
        :class:`AlertRule` for grouping and cooldown). ``None`` is silent.
    start_step : int
        The first step number (the hooks use it to know whether to collect before the first ``step()``).

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with Recorder(model, every=1) as rec:
    ...     for step in range(3):
    ...         opt.zero_grad(); model(torch.randn(16, 4)).pow(2).mean().backward(); opt.step()
    ...         rec.step(step, phase="train")
    ...     table = rec.run().layers
    >>> sorted(table.loc[table["stat"] == "grad_out_norm", "layer"].unique())  # modules; parameters: '0.weight'
    ['0', '2']
    """

    def __init__(self, models: nn.Module | Mapping[str, nn.Module], every: int | str | RecordEvery = 1,
                 exact_every: int | None = None, stats: Iterable[str] | None = None,
                 out: str | os.PathLike | RunWriter | None = None,
                 flush_every: int = 100, alerts: Iterable[AlertRule] | None = None,
                 hessian_every: int | None = None, device_sync_every: int | None = None, *,
                 hessian_iterations: int = 20, hessian_tol: float = 1e-4, hessian_nets: Iterable[str] | None = None,
                 slopes_every: int | None = None, operator_every: int | None = None, tensorboard: bool = False,
                 alert_printer: Callable[[str], None] | None = print_alert, start_step: int = 0) -> None:
        self.models = normalize_models(models)
        self.schedule = Schedule(every, exact_every, hessian_every, slopes_every, start_step, operator_every)
        self.operator_every = self.schedule.operator_every
        self.every, self.exact_every = self.schedule.every, self.schedule.exact_every
        self.hessian_every, self.slopes_every = self.schedule.hessian_every, self.schedule.slopes_every
        self.flush_every = check_int_at_least("flush_every", flush_every, 1)
        self.device_sync_every = self.flush_every if device_sync_every is None else \
            check_int_at_least("device_sync_every", device_sync_every, 1)
        self.hessian_iterations = check_int_at_least("hessian_iterations", hessian_iterations, 1)
        self.hessian_tol = float(check_positive("hessian_tol", hessian_tol))
        self.stats = resolve_stats(stats, self.exact_every is not None, self.hessian_every is not None)
        self._want = set(self.stats)
        self.layers: dict[str, list[Layer]] = discover_layers(self.models)
        self._operators = [op for net in self.layers.values() for layer in net for op in layer.operators]
        self._params = [p for net in self.layers.values() for layer in net for p in layer.params]
        self.hessian_nets = None if hessian_nets is None else tuple(hessian_nets)
        for net in self.hessian_nets or ():
            if net not in self.models:
                raise ValueError(f"unknown hessian net {net!r}; valid: {', '.join(self.models)}")
        self.monitor = AlertMonitor(DEFAULT_RULES if alerts is None else alerts, alert_printer)
        if tensorboard and not tensorboard_available():
            raise ValueError(INSTALL_HINT)
        if tensorboard and out is None:
            raise ValueError("tensorboard=True needs an out directory")
        self._owns_writer = out is not None and not isinstance(out, RunWriter)
        self.writer: RunWriter | None = RunWriter(out) if self._owns_writer else out  # type: ignore[arg-type]
        self.outbox = Outbox(self.layers, self.stats, self.monitor, self.writer, tensorboard)
        self.observer = Observer(self.layers, self.stats, capture_inputs=self.hessian_every is not None)
        self.observer.on_order = self._order_known
        self._slopes: list[tuple[str, Tensor]] = []
        self._calls_since_flush = 0
        self._last_flush_step: int | None = None
        self._attached = False
        self._closed = False
        self.observer.armed = self.schedule.armed

    # --- lifecycle ------------------------------------------------------------------------------------
    def attach(self) -> "Recorder":
        """Register the hooks (returns ``self``)."""
        if self._closed:
            raise ValueError("this recorder is closed; create a new one")
        if not self._attached:
            self.observer.attach(self.models)
            self._attached = True
            if self._owns_writer:
                self.writer.write_config({"recorder": self.settings()})
                self.writer.write_provenance(device=str(self._device()))
                self.writer.set_status("running")
        return self

    def detach(self) -> None:
        """Remove every hook (recorded data stays; call :meth:`flush` or :meth:`close` to write it)."""
        self.observer.detach()
        self._attached = False

    def close(self, state: str = "done") -> None:
        """Flush, remove the hooks and, if the recorder created the run directory, mark it ``state``.

        A recorder that opened its own run directory also releases its lock, and marks a run ``"done"``
        as ``"diverged"`` (with the reason) if a parameter held non-finite values (:attr:`nonfinite`).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            if self._owns_writer:
                info = {}
                if state == "done" and self.outbox.nonfinite is not None:
                    state, info = "diverged", {"reason": self.outbox.nonfinite}
                self.writer.set_status(state, step=self.schedule.last_step, **info)
        finally:  # a failed flush (a full disk) still removes the hooks and releases the directory
            self.detach()
            self.outbox.close()
            if self._owns_writer:
                self.writer.close()

    def __enter__(self) -> "Recorder":
        return self.attach()

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        failed = "interrupted" if kind is KeyboardInterrupt else "failed"
        self.close("done" if kind is None else failed)

    def settings(self) -> dict[str, Any]:
        """The recorder's configuration as plain data (for a run's config.json)."""
        return {"nets": list(self.models), "every": self.schedule.record.setting(),
                "exact_every": self.exact_every, "hessian_every": self.hessian_every,
                "slopes_every": self.slopes_every, "operator_every": self.operator_every,
                "flush_every": self.flush_every, "stats": list(self.stats),
                "alerts": self.monitor.state_dict()["rules"]}

    @property
    def collecting_slopes(self) -> bool:
        """Whether :meth:`record_input_gradients` will compute in the coming step (inputs need grad only then)."""
        return self.schedule.slopes_armed

    @property
    def nonfinite(self) -> str | None:
        """The first recorded non-finite parameter, e.g. ``"non-finite parameter D/0.weight at step 3"``
        (synced steps only), or ``None``."""
        return self.outbox.nonfinite

    @property
    def latest_alert(self) -> str | None:
        """The message of the most recent alert (for progress bars)."""
        return self.monitor.latest

    def _device(self) -> torch.device:
        return self._params[0].tensor.device

    def begin(self, step: int, phase: str | None = None) -> None:
        """Announce the step about to run, so the hooks collect exactly when it will be recorded.

        Optional: without it the recorder predicts the next (step, phase) from
        the pattern of previous ``step()`` calls. Once used, call it before every step.
        """
        self.schedule.begin(step, phase)
        self.observer.armed = self.schedule.armed

    # --- the per-step calls -------------------------------------------------------------------------
    def step(self, step: int, phase: str = "train") -> None:
        """Mark the end of an optimizer step; records it if it is on a schedule.

        Statistics collected since the previous call are attributed to
        ``(step, phase)``. Step numbers must not decrease within a phase; a
        (step, phase) already recorded is not recorded again (the first wins).
        """
        check_int_at_least("step", step, 0)
        check_name("phase", phase)
        if not self._attached:
            raise ValueError("the recorder is not attached: call attach() or use it as a context manager")
        cheap, exact, hessian = self.schedule.due(step)
        due = (cheap or exact or hessian) and not self.schedule.done(step, phase)
        nets = [net for net in self.models if net in self.observer.active]
        if due and nets:
            self._record(step, phase, nets, cheap, exact, hessian)
        self.observer.reset_step()
        self._slopes = []
        self.schedule.finish(step, phase, recorded=due)
        self.observer.armed = self.schedule.armed
        self._calls_since_flush += 1
        if self._last_flush_step is None:
            self._last_flush_step = step
        if self._calls_since_flush >= self.flush_every or step - self._last_flush_step >= self.flush_every:
            self.flush()
        elif len(self.outbox.steps) >= self.device_sync_every:
            self.outbox.sync()

    def _record(self, step: int, phase: str, nets: list[str], cheap: bool, exact: bool, hessian: bool) -> None:
        buffer = self.observer.buffer if cheap else StepBuffer()
        layers = [layer for net in nets for layer in self.layers[net]]
        if cheap and self.schedule.slopes_due(step):
            for kind, values in self._slopes:
                names = [template.format(kind=kind) for template in SLOPE_SCALARS]
                self.outbox.add_scalars(step, names, values)
        hessian_values = functools.cache(lambda: self._hessian_values(nets))  # one probe for every chunk
        families = [family for family in FAMILIES if family.collect is not None and family.due(cheap, exact, hessian)]
        operator_due = self.schedule.operator_due(step)
        for chunk in cache_sized_chunks(layers, self._device()):
            context = StepContext(buffer, chunk, self._want, exact, self.observer.weff_grads,
                                  self.observer.grad_seen, self.observer.snapshots,
                                  operator_due=operator_due, hessian=hessian_values,
                                  early_grad_norms=self.observer.grad_norms)
            for family in families:
                if context.wants(family):
                    family.collect(context)
        if len(buffer):
            self.outbox.add_step(PackedStep(step, phase, tuple(nets), buffer.pack(), dict(buffer.counts)))

    def _hessian_values(self, nets: list[str]) -> dict[int, Tensor]:
        """``hessian_top`` per operator uid, for the chosen nets (whole-parameter operators only)."""
        out: dict[int, Tensor] = {}
        for net in nets:
            x = self.observer.inputs.get(net)
            chosen = net in self.hessian_nets if self.hessian_nets is not None else \
                self.observer.per_sample_output.get(net, False)
            if x is None or not chosen:
                continue
            ops = [op for layer in self.layers[net] for op in layer.operators if op.whole and op.raw.requires_grad]
            # A NaN input or weight makes the curvature NaN, and Lanczos' eigh raises on it instead: the
            # step keeps its rows, with NaN here (the Hessian schedule may read flags on the host).
            values = None
            if nonfinite_norm(x.detach()) is None and all(nonfinite_norm(op.raw.detach()) is None for op in ops):
                try:
                    with self.paused():
                        values = hessian_norms(self.models[net], x, [op.raw for op in ops],
                                               self.hessian_iterations, self.hessian_tol)
                except torch.linalg.LinAlgError:  # non-finite values inside the net
                    values = None
            if values is None:
                values = [torch.full((), float("nan"), dtype=op.raw.dtype, device=op.raw.device) for op in ops]
            out.update({op.uid: value for op, value in zip(ops, values)})
        return out

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hide the passes run inside this block from the hooks (e.g. a gradient penalty's inner backward)."""
        previous = self.observer.suspended
        self.observer.suspended = True
        try:
            yield
        finally:
            self.observer.suspended = previous

    def record_input_gradients(self, net: str, x: Tensor | Sequence[Tensor],
                               output: Tensor | Sequence[Tensor] | None = None,
                               kind: str | Sequence[str] = "real") -> Tensor | list[Tensor] | None:
        """Record per-sample ``||d net(x)_i / d x_i||`` (min / mean / max) as scalars ``slope_{kind}_*``.

        Computed only when the coming step will be recorded (returns ``None``
        otherwise); see :func:`gradscope.record.probes.input_gradient_norms`
        for ``output``. The caller's graph and ``.grad`` are left untouched,
        and the recorder's own hooks ignore this extra backward pass. Pass
        sequences (``[real, fake]``, ``[real_out, fake_out]``, ``["real", "fake"]``)
        to handle several batches of one forward pass with one backward pass.

        Returns
        -------
        Tensor, list of Tensor or None
            The per-sample norms, detached.
        """
        if net not in self.models:
            raise ValueError(f"unknown net {net!r}; valid: {', '.join(self.models)}")
        kinds = [kind] if isinstance(kind, str) else list(kind)
        n_inputs = 1 if isinstance(x, Tensor) else len(x)
        if len(kinds) != n_inputs:
            raise ValueError(f"got {n_inputs} inputs but {len(kinds)} kinds")
        for name in kinds:
            check_name("kind", name)
        if not self.schedule.slopes_armed:
            return None
        with self.paused():
            norms = input_gradient_norms(self.models[net], x, output)
        for name, values in zip(kinds, [norms] if isinstance(norms, Tensor) else norms):
            self._slopes.append((name, torch.stack([values.min(), values.mean(), values.max()])))
        return norms

    def log_scalars(self, step: int, values: Mapping[str, float | Tensor]) -> None:
        """Store model-level scalars ``(step, name, value)``; tensors stay on the device until a flush."""
        check_int_at_least("step", step, 0)
        for batch in scalar_batches(step, values):
            self.outbox.add_scalars(*batch)

    # --- moving data to the host and to disk ---------------------------------------------------
    def flush(self) -> None:
        """Copy everything pending to the host and write it to the run directory."""
        self.outbox.flush(self.schedule.last_step, self._params)
        self._calls_since_flush = 0
        self._last_flush_step = self.schedule.last_step

    def _order_known(self, net: str) -> None:
        if self.writer is not None:
            self.writer.write_architecture({name: [layer.describe() for layer in sorted(layers, key=lambda x: x.order)]
                                            for name, layers in self.layers.items()})

    def run(self) -> Run:
        """Everything recorded so far as a :class:`Run` (flushes first)."""
        self.flush()
        return self.outbox.run({"recorder": self.settings()})

    # --- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume recording exactly (flushes first, so disk and state agree)."""
        self.flush()
        return {"format": STATE_FORMAT, "schedule": self.schedule.state_dict(), "alerts": self.monitor.state_dict(),
                "layer_order": {net: [layer.name for layer in sorted(layers, key=lambda x: x.order)]
                                for net, layers in self.layers.items() if net in self.observer.order_known},
                "spectral": {f"{op.net}/{op.name}": op.spectral.state_dict() for op in self._operators}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` and drop what the run directory holds beyond that state's last step."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a gradscope Recorder state (wrong or missing 'format')")
        self.schedule.load_state_dict(state["schedule"])
        self.observer.armed = self.schedule.armed
        self.monitor.load_state_dict(state["alerts"])
        for net, names in state["layer_order"].items():
            if net not in self.layers:
                continue
            position = {name: i for i, name in enumerate(names)}
            for layer in self.layers[net]:
                layer.order = position.get(layer.name, len(position) + layer.order)
            self.observer.order_known.add(net)
        spectral = state.get("spectral", {})
        for op in self._operators:
            saved = spectral.get(f"{op.net}/{op.name}")
            if saved is not None:
                op.spectral.load_state_dict(saved, op.raw.device)
        self.outbox.discard()
        self._last_flush_step = self.schedule.last_step
        self.outbox.purge_step = None if self.schedule.last_step is None else self.schedule.last_step + 1
        if self.writer is not None:
            self.writer.truncate_after(self.schedule.last_step)
