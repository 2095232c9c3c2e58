"""Settings for the whole test session."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread_session():
    """One intra-op thread, here and in every process a test starts (the trainer, DDP ranks and sweep
    workers read ``OMP_NUM_THREADS``).

    The tests' problems are small: on a shared 2-core machine threads hand work to each other and wait
    (the dense SVDs of the analyses slow down 10x or more), and two spawned ranks with two threads each
    oversubscribe the cores. Runs compared bit for bit (resume, DDP ranks) all share the one setting.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(previous)
