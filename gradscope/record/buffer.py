"""Device-side accumulation: numbers stay on the device until one batched copy per flush.

During a step the hooks append 0-d tensors, each tagged with an integer slot
``uid * N_QUANTITIES + quantity`` kept on the host. At ``step()`` they are
stacked into one vector per device (one kernel); at a flush the vectors of
all pending steps are concatenated and copied with a single transfer per
device. Nothing here reads a value on the host, so no hook synchronizes.

A *sum* quantity (activations, gradients, weights) accumulates ``sum(x)``
and ``sum(x**2)`` over every tensor it sees, with the entry count kept on the
host; means, variances and norms are derived after the copy. A *direct*
quantity is a single value per step.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gradscope.record.families import SLOTS

# Sum quantity q occupies offsets 2q (sum) and 2q + 1 (sum of squares); direct ones follow. The
# layout is generated from the statistic families (gradscope.record.families).
SUM_OFFSET, DIRECT_OFFSET, N_QUANTITIES = SLOTS.sums, SLOTS.direct, SLOTS.size


def sum_and_square_sum(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum(x), sum(x**2))`` as 0-d tensors, float32 at least, without a host sync.

    ``torch.dot`` on the flat view is several times faster on CPU than
    ``torch.var_mean`` (which runs Welford's algorithm); the price is float32
    accumulation (relative error ~1e-5 on 10^6-entry tensors; exact enough
    for monitoring, and float64 models get float64 sums).
    """
    x = x.detach()
    if x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
        flat = x.view(-1)
        return flat.sum(), torch.dot(flat, flat)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.sum(dtype=acc), torch.linalg.vector_norm(x, dtype=acc).square()


class StepBuffer:
    """The tagged 0-d tensors collected since the last ``Recorder.step``."""

    def __init__(self) -> None:
        self.values: list[Tensor] = []
        self.slots: list[int] = []
        self.counts: dict[int, int] = {}
        # Sums of tensors seen this step, by identity and version: one layer's output is often the next
        # one's input (a layer norm feeding a projection). A weak reference: holding the activations
        # themselves would keep them alive past the backward pass.
        self._seen: dict[int, tuple[weakref.ref, int, Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.values)

    def add_sums(self, uid: int, quantity: str, x: Tensor) -> None:
        """Accumulate ``sum(x)`` and ``sum(x**2)`` of ``x`` into the layer's ``quantity``."""
        base = uid * N_QUANTITIES + SUM_OFFSET[quantity]
        known = self._seen.get(id(x))
        if known is not None and known[0]() is x and known[1] == x._version:
            s1, s2 = known[2], known[3]
        else:
            s1, s2 = sum_and_square_sum(x)
            self._seen[id(x)] = (weakref.ref(x), x._version, s1, s2)
        self.values += (s1, s2)
        self.slots += (base, base + 1)
        self.counts[base] = self.counts.get(base, 0) + x.numel()

    def add(self, uid: int, quantity: str, value: Tensor) -> None:
        """Record a single value of a direct quantity."""
        if value.ndim or value.requires_grad:
            value = value.detach().reshape(())
        self.values.append(value)
        self.slots.append(uid * N_QUANTITIES + DIRECT_OFFSET[quantity])

    def pack(self) -> list[tuple[Tensor, np.ndarray]]:
        """Stack the values into one vector per device (copies them, so buffers may change after)."""
        devices = {value.device for value in self.values}
        groups: dict[torch.device, tuple[list[Tensor], list[int]]] = {}
        if len(devices) == 1:  # the usual case: one group as it stands
            groups[devices.pop()] = (self.values, self.slots)
        else:
            for value, slot in zip(self.values, self.slots):
                vals, slots = groups.setdefault(value.device, ([], []))
                vals.append(value)
                slots.append(slot)
        packed = []
        for vals, slots in groups.values():
            vec = torch.stack(vals)  # promotes mixed float32 / float64 to float64
            if vec.dtype not in (torch.float32, torch.float64):
                vec = vec.to(torch.float32)
            packed.append((vec, np.asarray(slots, dtype=np.int64)))
        return packed


@dataclass
class PackedStep:
    """One recorded (step, phase): device vectors plus their host-side slot tags and entry counts."""

    step: int
    phase: str
    nets: tuple[str, ...]
    parts: list[tuple[Tensor, np.ndarray]]
    counts: dict[int, int]


def copy_to_host(tensors: list[Tensor]) -> list[np.ndarray]:
    """float64 host copies of 1-d tensors: one concatenation and one transfer per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out: list[np.ndarray] = [np.zeros(0)] * len(tensors)
    for indices in by_device.values():
        flat = torch.cat([tensors[i] for i in indices]).cpu().numpy().astype(np.float64)
        start = 0
        for i in indices:
            out[i] = flat[start:start + tensors[i].numel()]
            start += tensors[i].numel()
    return out
