"""The hot path: module and tensor hooks that feed the step buffer while the model trains.

Hooks stay registered for the whole run but return at once unless the
observer is *armed* (the coming step will be recorded). When armed they
enqueue a few reductions per tensor (see :mod:`gradscope.record.buffer`) and
register gradient hooks on that step's activations only; nothing is read on
the host. Forward passes run with gradients disabled (sampling, evaluation)
and the recorder's own probes (``suspended``) are ignored.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradscope.record.buffer import StepBuffer
from gradscope.record.families import FAMILIES
from gradscope.record.layers import Layer

#: A CPU gradient at least this large has its norm taken in its accumulation hook, while it is still in
#: cache; smaller ones are cheaper together, in one ``_foreach_norm`` at ``step()``.
EARLY_NORM_BYTES = 64 * 1024


def hooked_quantities(want: set[str]) -> set[str]:
    """The hook-accumulated quantities the selected statistics need (a quantity's statistics are named after it)."""
    return {quantity for family in FAMILIES if family.hook in ("forward", "backward")
            for quantity in family.sums if any(stat.startswith(quantity + "_") for stat in want & set(family.stats))}


def first_tensor(output: Any) -> Tensor | None:
    """The module's output tensor: itself, or the first floating-point tensor of a tuple / list / dict output."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value
    return None


class Observer:
    """Hook state shared by all watched layers of all nets."""

    def __init__(self, layers: dict[str, list[Layer]], wanted: Iterable[str], capture_inputs: bool) -> None:
        self.layers = layers
        want = set(wanted)
        hooked = hooked_quantities(want)
        self.act_in, self.act_out = "act_in" in hooked, "act_out" in hooked
        self.grad_out, self.grad_in = "grad_out" in hooked, "grad_in" in hooked
        self.grad_w_eff = "grad_w_eff_norm" in want
        self.snapshot = "param_update_ratio" in want
        self.capture_inputs = capture_inputs
        self.armed = False
        self.suspended = False
        self.buffer = StepBuffer()
        self.weff_grads: dict[int, Tensor] = {}
        self.grad_seen: set[int] = set()
        self.hot_grad_norms = bool(want & {"param_grad_norm", "grad_w_raw_norm"})
        self.grad_norms: dict[int, tuple[weakref.ref, int, Tensor]] = {}
        self.snapshots: dict[int, Tensor] = {}
        self.copied: set[int] = set()  # layers whose parameters are all copied this step
        self.active: set[str] = set()
        self.inputs: dict[str, Tensor] = {}
        self.per_sample_output: dict[str, bool] = {}
        # Layer order is the order of first execution, captured on a net's first forward pass.
        self.order_known: set[str] = set()
        self._seen: dict[str, list[Layer]] = {}
        self.on_order: Callable[[str], None] | None = None
        self.handles: list[RemovableHandle] = []

    # --- registration ---------------------------------------------------------------------------
    def attach(self, models: dict[str, nn.Module]) -> None:
        """Register every hook."""
        for net, model in models.items():
            self.handles.append(model.register_forward_pre_hook(partial(self._root_pre, net)))
            self.handles.append(model.register_forward_hook(partial(self._root_post, net)))
            for layer in self.layers[net]:
                self.handles.append(layer.module.register_forward_pre_hook(partial(self._layer_pre, layer)))
                self.handles.append(layer.module.register_forward_hook(partial(self._layer_post, layer)))
                for param in layer.params:
                    tensor = param.tensor
                    if tensor.is_leaf and tensor.requires_grad:
                        early = tensor.device.type == "cpu" and tensor.numel() * tensor.element_size() >= EARLY_NORM_BYTES
                        self.handles.append(tensor.register_post_accumulate_grad_hook(
                            partial(self._accumulated, param.uid, early)))
                plist = layer.parametrizations
                if plist is not None:
                    self.handles.append(plist.register_forward_hook(partial(self._effective_weight, layer)))

    def detach(self) -> None:
        """Remove every hook."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def reset_step(self) -> None:
        """Forget everything collected since the last step."""
        self.buffer = StepBuffer()
        self.weff_grads = {}
        self.grad_seen = set()
        self.grad_norms = {}
        self.snapshots = {}
        self.copied = set()
        self.active = set()
        self.inputs = {}

    def _recording(self) -> bool:
        return self.armed and not self.suspended and torch.is_grad_enabled()

    # --- net level ---------------------------------------------------------------------------------
    def _root_pre(self, net: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.suspended:
            return
        if net not in self.order_known:
            self._seen[net] = []
        if not torch.is_grad_enabled():
            return
        self.active.add(net)
        if self.capture_inputs and net not in self.inputs and args and isinstance(args[0], Tensor):
            self.inputs[net] = args[0].detach()

    def _root_post(self, net: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.suspended:
            return
        if self.snapshot and self._recording():  # parameters used outside their own module's forward
            self._snapshot(self.layers[net])
        if net not in self.per_sample_output and isinstance(output, Tensor) and output.ndim >= 1:
            self.per_sample_output[net] = output.numel() == output.shape[0]
        if net not in self.order_known and self._seen.get(net):
            seen = self._seen.pop(net)
            rest = [layer for layer in self.layers[net] if layer not in seen]
            for order, layer in enumerate(seen + rest):
                layer.order = order
            self.order_known.add(net)
            if self.on_order is not None:
                self.on_order(net)

    def _snapshot(self, layers: list[Layer]) -> None:
        """Copy the layers' trainable parameters once per recorded step, before the optimizer moves them.

        Called after each layer's forward, while its weights are still in cache. A parameter that does not
        require a gradient in this forward (a net used as a fixed function, as D in the generator's update)
        gets no update from it and is not copied; a later forward may still.
        """
        for layer in layers:
            if layer.uid in self.copied:
                continue
            done = True
            for param in layer.params:
                if param.uid in self.snapshots:
                    continue
                if param.tensor.requires_grad:
                    self.snapshots[param.uid] = param.tensor.detach().clone()
                else:
                    done = False
            if done:
                self.copied.add(layer.uid)

    # --- layer level -------------------------------------------------------------------------------
    def _layer_pre(self, layer: Layer, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not (self.act_in or self.grad_in) or not args or not isinstance(args[0], Tensor) or not self._recording():
            return None
        x = args[0]
        if self.act_in and x.is_floating_point():
            # Before the layer runs: x was just written (still in cache), and it is the very tensor the
            # previous layer returned, whose sums the buffer may already hold.
            self.buffer.add_sums(layer.uid, "act_in", x)
        if not (self.grad_in and x.requires_grad):
            return None
        # A fresh view gets exactly this layer's share of dL/dx even when x also feeds other layers.
        x = x.view_as(x)
        x.register_hook(partial(self._gradient, layer.uid, "grad_in"))
        return (x, *args[1:])

    def _layer_post(self, layer: Layer, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.suspended:
            return
        seen = self._seen.get(layer.net)
        recording = self._recording()
        if seen is None and not recording and layer.input_size is not None:  # the usual unrecorded forward
            return
        if seen is not None and layer not in seen:
            seen.append(layer)
        x = args[0] if args and isinstance(args[0], Tensor) and args[0].is_floating_point() else None
        if x is not None:  # the input size a conv's operator norm is taken on (read on recorded steps)
            layer.input_size = tuple(x.shape[2:]) if x.ndim > 2 else tuple(x.shape[-1:])
        if not recording:
            return
        output = first_tensor(output)
        # A net counts as run when any of its layers ran (a LightningModule's training_step may call
        # its children without ever calling the module itself).
        self.active.add(layer.net)
        if self.snapshot:
            self._snapshot([layer])
        if output is None:
            return
        if self.act_out:
            self.buffer.add_sums(layer.uid, "act_out", output)
        if self.grad_out and output.requires_grad:
            output.register_hook(partial(self._gradient, layer.uid, "grad_out"))

    def _effective_weight(self, layer: Layer, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, Tensor) or self.suspended:
            return
        if layer.foreign:
            layer.last_effective = output.detach()
        if self.grad_w_eff and self._recording() and output.requires_grad and not output.is_leaf:
            output.register_hook(partial(self._effective_gradient, layer.uid))

    # --- tensor hooks (run during backward) ------------------------------------------------------
    def _gradient(self, uid: int, quantity: str, grad: Tensor) -> None:
        if not self.suspended:
            self.buffer.add_sums(uid, quantity, grad)

    def _accumulated(self, uid: int, early: bool, param: Tensor) -> None:
        # Only a weight that received a gradient in this step has a .grad worth recording
        # (a frozen or untouched weight may still hold the previous step's).
        if self.suspended:
            return
        self.grad_seen.add(uid)
        if not (early and self.hot_grad_norms and self.armed):
            return
        grad = param.grad
        if grad is not None:
            # Just written, so in cache: its norm now costs a fraction of a read from memory at step().
            # Kept with the tensor's identity and version: clipping or another accumulation before step()
            # makes it stale, and step() computes it again.
            self.grad_norms[uid] = (weakref.ref(grad), grad._version, torch.linalg.vector_norm(grad.detach()))

    def _effective_gradient(self, uid: int, grad: Tensor) -> None:
        if self.suspended:
            return
        # The weight is used once per forward call; its total gradient is the sum over calls.
        previous = self.weff_grads.get(uid)
        self.weff_grads[uid] = grad if previous is None else previous + grad
