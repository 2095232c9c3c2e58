"""Real batches in a deterministic, resumable order that does not depend on the number of processes.

Epoch ``e`` visits the dataset in a permutation drawn from a generator seeded
by ``(seed, e)``; global batch ``b`` is positions ``[j B, (j + 1) B)`` of epoch
``b // k``'s permutation, ``j = b mod k``, ``k = N // B`` (the tail of each
epoch is dropped). Under ``torchrun`` rank ``r`` of ``W`` takes the ``r``-th
contiguous ``B / W`` of every global batch. The whole position is one integer,
the number of global batches consumed, so a checkpoint resumes the same
sequence on any world size.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from gradscope._checks import check_int_at_least


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order in which epoch ``epoch`` visits ``n`` samples (int64, CPU).

    Examples
    --------
    >>> bool((epoch_permutation(10, 0, 3) == epoch_permutation(10, 0, 3)).all())
    True
    >>> sorted(epoch_permutation(5, 1, 0).tolist())
    [0, 1, 2, 3, 4]
    """
    seed64 = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed64))


class _IndexSampler:
    """Infinite sampler of this rank's index lists, starting at a global batch position."""

    def __init__(self, stream: BatchStream, start: int) -> None:
        self.stream, self.start = stream, start

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            yield self.stream.indices(position).tolist()
            position += 1


class BatchStream:
    """An endless, resumable stream of this process's share of each real batch.

    Parameters
    ----------
    dataset : GANDataset
        In-memory datasets are moved to ``device`` once and gathered there;
        file-backed ones are decoded by a ``DataLoader`` with ``workers`` processes.
    batch_size : int
        The global batch size ``B`` (all processes together).
    seed : int
        Seed of the epoch permutations.
    rank, world_size : int
        This process and the number of processes; ``B`` must divide by ``world_size``.
    device : torch.device
        Where batches are delivered.
    workers : int
        DataLoader workers for file-backed datasets.
    position : int
        Global batches already consumed (from a checkpoint).

    Examples
    --------
    >>> from gradscope.data import load_dataset
    >>> ds = load_dataset("ring8")
    >>> a, b = BatchStream(ds, 8, seed=0), BatchStream(ds, 8, seed=0)
    >>> _ = next(a); bool((next(a) == BatchStream(ds, 8, seed=0, position=1).__next__()).all())
    True
    """

    def __init__(self, dataset, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", workers: int = 0, position: int = 0) -> None:
        check_int_at_least("batch_size", batch_size, 1)
        if batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} must be divisible by the number of processes {world_size}")
        if len(dataset) < batch_size:
            raise ValueError(f"dataset {dataset.name!r} has {len(dataset)} samples, fewer than --batch-size "
                             f"{batch_size}; lower --batch-size")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.device, self.workers = torch.device(device), workers
        self.per_epoch = len(dataset) // batch_size
        self.position = check_int_at_least("position", position, 0)
        self._permutation: tuple[int, Tensor] | None = None
        self._device_data: Tensor | None = None
        self._loader_iter: Iterator[Tensor] | None = None

    def indices(self, position: int) -> Tensor:
        """This rank's dataset indices in global batch ``position``."""
        epoch, slot = divmod(position, self.per_epoch)
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, epoch_permutation(len(self.dataset), self.seed, epoch))
        start = slot * self.batch_size
        share = self.batch_size // self.world_size
        start += self.rank * share
        return self._permutation[1][start:start + share]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Tensor:
        if getattr(self.dataset, "in_memory", False):
            if self._device_data is None:
                self._device_data = self.dataset.data.to(self.device)
            index = self.indices(self.position).to(self.device)
            batch = self.dataset.decode(self._device_data[index])
        else:
            if self._loader_iter is None:
                loader = DataLoader(self.dataset, batch_sampler=_IndexSampler(self, self.position),
                                    num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                    persistent_workers=self.workers > 0)
                self._loader_iter = iter(loader)
            batch = next(self._loader_iter).to(self.device, non_blocking=True)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"position": global batches consumed}``."""
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict` (restarts any loader workers at that position)."""
        self.position = int(state["position"])
        self._loader_iter = None
