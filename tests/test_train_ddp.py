"""DistributedDataParallel on CPU (gloo): ranks stay identical, rank 0 writes, checkpoints resume on one process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from gradscope.train import RunConfig, resume, train
from gradscope.train.checkpoint import list_checkpoints

WORLD = 2
ITERATIONS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, dump: str, settings: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    from gradscope.train import loop

    build = loop.build_networks

    def rank1_starts_elsewhere(config, dataset):
        # Rank 1's power-iteration vectors and sigmas start off rank 0's: only DDP's buffer broadcast
        # from rank 0 can make them equal again (power iteration alone would not, bit for bit).
        D, G = build(config, dataset)
        if rank == 1:
            with torch.no_grad():
                for buffer in D.buffers():
                    buffer.add_(torch.rand(buffer.shape, generator=torch.Generator().manual_seed(1)) * 1e-2)
        return D, G

    loop.build_networks = rank1_starts_elsewhere
    result = train(RunConfig(**settings))
    torch.save({"state": result.state, "step": result.step, "D": result.discriminator.state_dict(),
                "G": result.generator.state_dict()}, Path(dump) / f"rank{rank}.pt")


def test_ranks_share_sigmas_and_weights_and_resume_on_one_process(tmp_path):
    out = tmp_path / "run"
    # n_dis 2 and the gradient penalty's double backward run several DDP forwards and backwards per
    # step while the normalizations (BSSN: two vectors per layer) update their buffers in place.
    settings = dict(dataset="digits", image_size=8, batch_size=4, norm="bssn", scale=1.2, loss="wgan-gp", n_dis=2,
                    iterations=ITERATIONS, checkpoint_every=2, eval_every=0, sample_every=0, quiet=True,
                    out=str(out))
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path), settings), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [(r["state"], r["step"]) for r in ranks] == [("done", ITERATIONS)] * WORLD
    d0, d1 = ranks[0]["D"], ranks[1]["D"]
    sigmas = [k for k in d0 if k.endswith("sigma")]
    assert sigmas, "the normalized discriminator must keep sigma buffers"
    for key in d0:
        assert torch.equal(d0[key], d1[key]), [k for k in d0 if not torch.equal(d0[k], d1[k])]
    for key, value in ranks[0]["G"].items():
        if "running" not in key and "num_batches" not in key:  # batch-norm statistics are per rank
            assert torch.equal(value, ranks[1]["G"][key]), key
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == WORLD
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    written = {p.name for p in out.iterdir()}
    assert written <= {"alerts.jsonl", "architecture.json", "checkpoints", "config.json", "layers",
                       "provenance.json", "samples", "scalars", "status.json"}
    assert {"config.json", "status.json", "checkpoints", "layers", "scalars"} <= written
    more = resume(out, iterations=ITERATIONS + 2, quiet=True)  # written by 2 processes, continued by 1
    assert (more.state, more.step) == ("done", ITERATIONS + 2)


def test_torchrun_launches_the_run_command(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(WORLD), "-m", "gradscope", "run", "--dataset", "ring8", "--batch-size", "8",
                           "--iterations", "3", "--eval-every", "3", "--eval-samples", "100", "--quiet",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert (status["state"], status["step"]) == ("done", 3)
    assert json.loads((out / "config.json").read_text())["world_size"] == WORLD
