"""Run storage at the paper's length: disk size, write cost and read times of a setting-A-shaped run.

The rows are the real recorder's: a few iterations of ``gradscope run`` (SNDCGAN
on 32x32 MNIST, D with 8 layers and G with 5 layers plus batch norms, every
default statistic, recording every step) give one iteration's row layout
(phase, net, layer, layer_index, stat). A synthetic run repeats it for
``--iterations`` iterations through :class:`gradscope.record.RunWriter`, one
chunk per ``--flush-every`` iterations as ``gradscope run`` writes them, with
values that drift as recorded statistics do (full float64 mantissas, the worst
case for compression). Sizes and read times are then extrapolated linearly to
400k iterations (rows and files both grow linearly) and stated as such.

Write cost: the Parquet writer and the CSV writer of earlier versions,
interleaved in a shuffled order over the same flushes in one process (this
machine is shared and noisy; only their ratio is compared).

Reads are measured in fresh processes (peak memory is the process's maximum
resident set minus its baseline after imports):
- one statistic of one net for every step: ``load_run(RUN).stat("grad_out_norm", net="D", phase="d")``;
- the whole layers table: ``load_run(RUN).layers``.

Run: ``python benchmarks/bench_storage.py --iterations 40000``
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.record import RunWriter, load_run
from gradscope.record.chunks import frame_to_csv
from gradscope.record.storage import atomic_write_text

PAPER_ITERATIONS = 400_000
READ_ONE = """
import resource, sys, time
import gradscope.record as r
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
{body}
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, (peak - base) * 1024, n)
"""
READS = {
    "one stat of one net, all steps": "wide = r.load_run(sys.argv[1]).stat('grad_out_norm', net='D', phase='d'); "
                                      "n = wide.size",
    "whole layers table": "n = len(r.load_run(sys.argv[1]).layers)",
}


def template_rows(work: Path) -> pd.DataFrame:
    """One iteration's layer rows of a real run (step 1: not an exact-statistics step)."""
    out = work / "template"
    subprocess.run([sys.executable, "-m", "gradscope", "run", "--norm", "sn", "--iterations", "3", "--eval-every",
                    "0", "--sample-every", "0", "--checkpoint-every", "0", "--width", "0.125", "--out", str(out),
                    "--quiet"], check=True)
    layers = load_run(out).layers
    rows = layers[layers["step"] == 1].reset_index(drop=True)
    return rows.astype({c: str for c in ("phase", "net", "layer", "stat")})


def iteration_frames(template: pd.DataFrame, steps: range, seed: int) -> list[pd.DataFrame]:
    """Frames of ``steps`` with the template's layout and drifting values (a multiplicative random walk)."""
    rng = np.random.default_rng(seed)
    base = template["value"].to_numpy(dtype=np.float64)
    base = np.where(np.isfinite(base) & (base != 0), base, 1.0)
    walk = np.cumsum(rng.normal(0.0, 0.01, size=(len(steps), len(base))), axis=0)
    frames = []
    for i, step in enumerate(steps):
        frame = template.copy()
        frame["step"] = np.int64(step)
        frame["value"] = base * np.exp(walk[i])
        frames.append(frame)
    return frames


class CsvWriter(RunWriter):
    """The writer of earlier versions: each flush a CSV chunk (kept here only to compare costs)."""

    def flush(self) -> None:
        for table, frames in self._pending.items():
            if frames:
                frame = pd.concat(frames, ignore_index=True)
                atomic_write_text(self.path / table / f"{self._next_chunk[table]:06d}.csv", frame_to_csv(frame),
                                  self.fsync)
                self._next_chunk[table] += 1
                self._pending[table] = []


def write_run(path: Path, template: pd.DataFrame, iterations: int, flush_every: int, fsync: bool,
              compare_csv: int) -> dict[str, list[float]]:
    """Write the synthetic run at ``path``; time ``compare_csv`` flushes of each format, interleaved."""
    writer = RunWriter(path, fsync=fsync)
    writer.write_config({"iterations": iterations, "synthetic": True})
    writer.set_status("running", step=0)
    csv_dir = Path(tempfile.mkdtemp(prefix="csv-", dir=path.parent))
    csv_writer = CsvWriter(csv_dir, fsync=fsync)
    timings: dict[str, list[float]] = {"parquet": [], "csv": []}
    order = random.Random(0)
    for block, start in enumerate(range(0, iterations, flush_every)):
        frames = iteration_frames(template, range(start, min(start + flush_every, iterations)), seed=block)
        variants = [("parquet", writer)] + ([("csv", csv_writer)] if block < compare_csv else [])
        order.shuffle(variants)
        for name, target in variants:
            began = time.process_time()
            for frame in frames:
                target.append_layers(frame)
            target.flush()
            if block < compare_csv:
                timings[name].append((time.process_time() - began) / len(frames))
    writer.set_status("done", step=iterations - 1)
    shutil.rmtree(csv_dir)
    return timings


def measure_read(path: Path, body: str) -> tuple[float, float, int]:
    code = READ_ONE.format(body=body)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    seconds, peak, n = done.stdout.split()
    return float(seconds), float(peak), int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40_000, help="iterations of the synthetic run")
    parser.add_argument("--flush-every", type=int, default=50, help="iterations per chunk (gradscope run's default)")
    parser.add_argument("--compare-flushes", type=int, default=40, help="flushes timed in both formats")
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync (default: fsync as gradscope run does)")
    parser.add_argument("--work", default=None, help="folder for the synthetic run (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    template = template_rows(work)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    began = time.perf_counter()
    timings = write_run(run, template, args.iterations, args.flush_every, not args.no_fsync, args.compare_flushes)
    write_wall = time.perf_counter() - began
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    rows = len(template) * args.iterations
    scale = PAPER_ITERATIONS / args.iterations
    result = {"rows_per_iteration": len(template), "iterations": args.iterations, "rows": rows,
              "files": sum(1 for _ in (run / "layers").iterdir()), "bytes": size, "bytes_per_row": size / rows,
              "write_wall_s": write_wall, "extrapolated_bytes_400k": size * scale}
    parquet, csv = statistics.median(timings["parquet"]), statistics.median(timings["csv"])
    result |= {"write_cpu_s_per_recorded_step": {"parquet": parquet, "csv": csv}, "write_ratio_parquet_to_csv":
               parquet / csv}
    for label, body in READS.items():
        seconds, peak, n = measure_read(run, body)
        result[label] = {"seconds": seconds, "peak_bytes": peak, "values": n, "extrapolated_seconds_400k":
                         seconds * scale, "extrapolated_peak_bytes_400k": peak * scale}
    gb = 1024 ** 3
    print(f"setting-A-shaped run: {len(template)} rows per iteration, {args.iterations} iterations, "
          f"{rows:,} rows in {result['files']} chunks")
    print(f"disk: {size / 1024 ** 2:.1f} MB ({size / rows:.2f} B per row); extrapolated to 400k iterations: "
          f"{size * scale / gb:.2f} GB")
    print(f"write, CPU per recorded step (median of {len(timings['csv'])} flushes each, interleaved): "
          f"parquet {parquet * 1e3:.2f} ms, csv {csv * 1e3:.2f} ms, ratio {parquet / csv:.2f}x")
    for label in READS:
        r = result[label]
        print(f"read {label}: {r['seconds']:.2f} s, peak {r['peak_bytes'] / gb:.2f} GB; extrapolated to 400k: "
              f"{r['extrapolated_seconds_400k']:.1f} s, {r['extrapolated_peak_bytes_400k'] / gb:.2f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
