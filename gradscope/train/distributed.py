"""Where a run executes: the device, CPU threads, and DistributedDataParallel under ``torchrun``.

``torchrun --nproc-per-node N -m gradscope run ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`init_distributed`
reads them and joins the process group (NCCL on CUDA, gloo on CPU). Every rank
builds the same networks from the same seed; DDP averages gradients and, with
``broadcast_buffers=True``, copies rank 0's buffers (the normalizations'
power-iteration vectors and sigmas, the generator's batch-norm statistics) to
all ranks at every forward, so every rank divides by the same sigma.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gradscope._checks import check_choice, check_int_at_least
from gradscope.train.config import POINT_DATASETS


@dataclass
class DistContext:
    """This process's place in the job (defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run directory."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag, whether it is true on at least one rank (one small all-reduce)."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        values = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """Turn ``auto`` / ``cpu`` / ``cuda`` / ``mps`` into a device; one-line error if it is absent.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    check_choice("device", request, ("auto", "cpu", "cuda", "mps"))
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if request == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("--device mps: the MPS backend is not available; use --device cpu or auto")
        return torch.device("mps")
    return torch.device("cpu")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota when one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


#: Largest image side still trained on one CPU thread (see :func:`configure_threads`).
SMALL_IMAGE_SIZE = 16
#: Largest channel multiplier (``--width``) still trained on one CPU thread: the experiments' SNDCGAN (E1-E4).
SMALL_WIDTH = 0.125


def is_small_problem(dataset: str, image_size: int | None, width: float = 1.0) -> bool:
    """A 2D point set, images of at most :data:`SMALL_IMAGE_SIZE` pixels (``None``: the dataset's own, 32+),
    or networks narrowed to at most :data:`SMALL_WIDTH` of the reference channels."""
    return (dataset in POINT_DATASETS or (image_size is not None and image_size <= SMALL_IMAGE_SIZE)
            or width <= SMALL_WIDTH)


def configure_threads(local_world_size: int = 1, *, small: bool = False, recorded: int | None = None) -> int:
    """Set this process's CPU threads by a fixed rule; return the count.

    The count changes the rounding of reductions, so it decides a run's numbers
    to the last bit: the rule depends on the run, never on timing. In order:

    - ``recorded``: the count a run being resumed used (it continues bit for bit);
    - ``small`` problems (the 2D sets, images of at most 16 pixels, networks of width <= 0.125) use one
      thread, whatever ``OMP_NUM_THREADS`` says: the same config then gives the
      same numbers in any process on any core count (a sweep's worker, whose
      environment sets ``OMP_NUM_THREADS`` to its share of the cores, included),
      and their kernels are too short to profit from a pool (measured on 2 shared
      cores, default digits job: 0.19 s per iteration on one thread, 0.47 s on two);
    - ``OMP_NUM_THREADS`` when set;
    - else an equal share of the CPUs for each local process.

    ``gradscope run`` records the count in ``config.json`` (``cpu_threads``) and
    passes it back as ``recorded`` on ``--resume``.
    """
    if recorded is not None:
        threads = check_int_at_least("recorded thread count", recorded, 1)
    elif small:
        threads = 1
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        threads = max(1, available_cpus() // max(1, local_world_size))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def init_distributed(device_type: str) -> DistContext:
    """Join the ``torchrun`` process group described by the environment, or return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def wrap(module: nn.Module, context: DistContext, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes run, else ``module`` itself."""
    if not context.active:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=True)
