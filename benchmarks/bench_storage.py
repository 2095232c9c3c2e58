"""Run storage at the paper's length: disk size, write cost and read times of a setting-A-shaped run.

The rows are the real recorder's: a few iterations of ``gradscope run`` (SNDCGAN
on 32x32 MNIST, D with 8 layers and G with 5 layers plus batch norms, every
default statistic, recording every step) give one iteration's row layout
(phase, net, layer, layer_index, stat). A synthetic run repeats it for
``--iterations`` iterations through :class:`gradscope.record.RunWriter`, one
chunk per ``--flush-every`` iterations as ``gradscope run`` writes them, with
values that drift as recorded statistics do (full float64 mantissas, the worst
case for compression; values that are 0 in the real run, such as non-finite
counts, stay 0). Sizes, read times and memory are measured on two run lengths
and extrapolated linearly (a line through both, so fixed costs are not scaled)
to 400k iterations, and stated as such.

Write cost: the Parquet writer and the CSV writer of earlier versions,
interleaved in a shuffled order over the same flushes in one process (this
machine is shared and noisy; only their ratio is compared).

Reads are measured in fresh processes, the fastest of ``--repeat`` (peak memory
is the process's maximum resident set minus its baseline after imports):
- one statistic of one net for every step: ``load_run(RUN).stat("grad_out_norm", net="D", phase="d")``;
- the whole layers table: ``load_run(RUN).layers``.

Run: ``python benchmarks/bench_storage.py --iterations 40000 --json benchmarks/results/storage.json``
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
print(dt, (peak - base) * 1024, n, held)
"""
READS = {
    "one stat of one net, all steps": "wide = r.load_run(sys.argv[1]).stat('grad_out_norm', net='D', phase='d'); "
                                      "n = wide.size; held = wide.memory_usage().sum()",
    "whole layers table": "table = r.load_run(sys.argv[1]).layers; n = len(table); "
                          "held = table.memory_usage().sum()",
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
    base = np.where(np.isfinite(base), base, 1.0)  # zeros stay zeros (non-finite counts, untouched biases)
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


def measure_read(path: Path, body: str, repeat: int) -> tuple[float, float, int, float]:
    """Seconds (the fastest of ``repeat`` fresh processes), peak resident bytes above the baseline (the
    largest), values read, bytes of the result."""
    code = READ_ONE.format(body=body)
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        seconds, peak, n, held = done.stdout.split()
        runs.append((float(seconds), float(peak), int(n), float(held)))
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[0][2], runs[0][3]


def extrapolate(small: float, large: float, n_small: int, n_large: int, n_target: int) -> float:
    """Linear in the iteration count through two measurements (fixed costs are not scaled up)."""
    slope = (large - small) / (n_large - n_small)
    return large + slope * (n_target - n_large)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40_000, help="iterations of the larger synthetic run "
                        "(a second run with a quarter of them fits the fixed costs)")
    parser.add_argument("--flush-every", type=int, default=50, help="iterations per chunk (gradscope run's default)")
    parser.add_argument("--compare-flushes", type=int, default=40, help="flushes timed in both formats")
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync (default: fsync as gradscope run does)")
    parser.add_argument("--work", default=None, help="folder for the synthetic runs (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per read; the fastest counts "
                        "(this machine's neighbours and page-fault costs vary by 2x between runs)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    template = template_rows(work)
    sizes = [max(args.flush_every, args.iterations // 4), args.iterations]
    measured: dict[int, dict] = {}
    timings: dict[str, list[float]] = {}
    for n in sizes:
        run = work / f"run{n}"
        shutil.rmtree(run, ignore_errors=True)
        began = time.perf_counter()
        timed = write_run(run, template, n, args.flush_every, not args.no_fsync,
                          args.compare_flushes if n == sizes[0] else 0)
        timings = timings or timed
        size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
        measured[n] = {"write_wall_s": time.perf_counter() - began, "bytes": size,
                       "files": sum(1 for _ in (run / "layers").iterdir()),
                       **{label: measure_read(run, body, args.repeat) for label, body in READS.items()}}
    small, large = sizes
    rows = len(template) * large
    result = {"rows_per_iteration": len(template), "sizes": sizes, "measured": measured,
              "bytes_per_row": measured[large]["bytes"] / rows,
              "extrapolated_bytes_400k": extrapolate(measured[small]["bytes"], measured[large]["bytes"], small, large,
                                                     PAPER_ITERATIONS)}
    parquet, csv = statistics.median(timings["parquet"]), statistics.median(timings["csv"])
    result |= {"write_cpu_s_per_recorded_step": {"parquet": parquet, "csv": csv},
               "write_ratio_parquet_to_csv": parquet / csv}
    for label in READS:
        (t_small, _, _, _), (t_large, m_large, _, held) = measured[small][label], measured[large][label]
        # Peak = the result (bytes per row x rows) + the scan's buffers, which are bounded by the size of one
        # segment file rather than growing with the run: measured at the larger run, carried over as they are.
        overhead = max(0.0, m_large - held)
        result[label] = {"extrapolated_seconds_400k": extrapolate(t_small, t_large, small, large, PAPER_ITERATIONS),
                         "result_bytes_400k": held * PAPER_ITERATIONS / large, "scan_overhead_bytes": overhead,
                         "extrapolated_peak_bytes_400k": held * PAPER_ITERATIONS / large + overhead}
    gb = 1e9
    print(f"setting-A-shaped run: {len(template)} rows per iteration; runs of {small:,} and {large:,} iterations "
          f"({rows:,} rows, {measured[large]['files']} layer files), extrapolated linearly to 400k iterations "
          f"({len(template) * PAPER_ITERATIONS:,} rows)")
    print(f"disk: {measured[large]['bytes'] / 1e6:.1f} MB ({result['bytes_per_row']:.2f} B per row); 400k: "
          f"{result['extrapolated_bytes_400k'] / gb:.2f} GB")
    print(f"write, CPU per recorded step (median of {len(timings['csv'])} flushes each, interleaved): "
          f"parquet {parquet * 1e3:.2f} ms, csv {csv * 1e3:.2f} ms, ratio {parquet / csv:.2f}x")
    for label in READS:
        t, m, _, held = measured[large][label]
        r = result[label]
        print(f"read {label}: {t:.2f} s, peak {m / gb:.2f} GB ({held / gb:.2f} GB of result) at {large:,} "
              f"iterations; 400k: {r['extrapolated_seconds_400k']:.1f} s, {r['extrapolated_peak_bytes_400k'] / gb:.2f} "
              f"GB ({r['result_bytes_400k'] / gb:.2f} GB of result + {r['scan_overhead_bytes'] / gb:.2f} GB buffers)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
