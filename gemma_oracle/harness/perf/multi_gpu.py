"""`gemma-oracle bench --gpus A,B,...`: one bench process per GPU, all at once, reported per GPU.

Each child is the same `gemma-oracle bench` command without --gpus, with its share of the models and its own
--out directory, started with its GPU's environment (gemma_oracle.harness.gpu_pinning.Gpu.env) so that it sees that GPU
as device 0. The report puts each child's own table under a heading naming its GPU, so it keeps up with
whatever the bench prints without knowing its columns.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gemma_oracle.harness.gpu_pinning import Gpu

LOG_TAIL_LINES = 20  # of a failed child's log, in the report


@dataclass(frozen=True)
class BenchJob:
    gpu: Gpu
    models: tuple[str, ...]
    out: Path
    argv: tuple[str, ...]  # the child's gemma-oracle arguments

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "gemma_oracle.harness.cli", *self.argv]

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {**environ, **self.gpu.env()}


def deal_models(models: Sequence[str], n_gpus: int) -> list[list[str]]:
    """The models each GPU runs. Slot j runs models[j % M] on GPU j % G for j < max(M, G): every model runs
    once when there are at least as many models as GPUs, and every GPU runs one model when there are fewer
    (the same model on several GPUs: per-GPU numbers of one model)."""
    if not models or n_gpus < 1:
        raise ValueError(f"need at least one model and one GPU, got {len(models)} model(s) and {n_gpus} GPU(s)")
    shares: list[list[str]] = [[] for _ in range(n_gpus)]
    for j in range(max(len(models), n_gpus)):
        shares[j % n_gpus].append(models[j % len(models)])
    return shares


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """argv less every `option VALUE` and `option=VALUE` (a one-value option)."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == option:
            skip_value = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def bench_jobs(argv: Sequence[str], models: Sequence[str], gpus: Sequence[Gpu], out: Path) -> list[BenchJob]:
    """One job per GPU. The child's --model and --out come last: argparse keeps an option's last value."""
    base = without_option(argv, "--gpus")
    jobs = []
    for gpu, share in zip(gpus, deal_models(models, len(gpus))):
        job_out = Path(out) / f"gpu{gpu.index}"
        jobs.append(BenchJob(gpu, tuple(share), job_out, (*base, "--model", *share, "--out", str(job_out))))
    return jobs


def run_jobs(jobs: Sequence[BenchJob], environ: Mapping[str, str] | None = None,
             python: str = sys.executable) -> list[int]:
    """Start every job, then wait for all; each child's output goes to its own bench.log. Exit codes in order."""
    environ = os.environ if environ is None else environ
    running = []
    for job in jobs:
        job.out.mkdir(parents=True, exist_ok=True)
        with open(job.out / "bench.log", "w") as log:  # the child holds its own copy of the descriptor
            running.append(subprocess.Popen(job.command(python), env=job.env(environ), stdout=log,
                                            stderr=subprocess.STDOUT))
    return [proc.wait() for proc in running]


def child_result(out: Path) -> tuple[str, list[dict], dict] | None:
    """(markdown, rows, run facts such as the device) of the bench a child ran into `out`: the newest complete run
    directory the bench stores there (bench-<time>/ with meta.json, report.md and bench.*.parquet), or a
    bench.json + bench.md pair."""
    runs = sorted(p for p in Path(out).glob("bench-*") if (p / "meta.json").exists())
    if runs:
        import pandas as pd

        parts = sorted(runs[-1].glob("bench.*.parquet"))
        rows = pd.concat([pd.read_parquet(p) for p in parts]).to_dict(orient="records") if parts else []
        text = (runs[-1] / "report.md").read_text() if (runs[-1] / "report.md").exists() else ""
        meta = json.loads((runs[-1] / "meta.json").read_text())
        return text, [{k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in r.items()}
                      for r in rows], {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}
    if (Path(out) / "bench.json").exists():
        child = json.loads((Path(out) / "bench.json").read_text())
        md = Path(out) / "bench.md"
        return (md.read_text() if md.exists() else ""), child.get("rows", []), \
            {k: v for k, v in child.items() if k != "rows"}
    return None


def report(jobs: Sequence[BenchJob], codes: Sequence[int], wall_s: float) -> tuple[str, dict]:
    """(markdown, json-able dict): a section per GPU holding that child's table, and every row with its GPU."""
    lines = [f"bench on {len(jobs)} GPUs in parallel: wall {wall_s:.1f} s", ""]
    per_gpu, rows = [], []
    for job, code in zip(jobs, codes):
        shown_as = "" if job.gpu.device == str(job.gpu.index) else f" ({job.gpu.device})"
        head = f"## GPU {job.gpu.index}{shown_as}: {' '.join(job.models)}"
        entry: dict = {"gpu": job.gpu.index, "device_id": job.gpu.device, "models": list(job.models), "exit_code": code}
        result = child_result(job.out) if code == 0 else None
        if result is not None:
            text, child_rows, facts = result
            child_rows = [{**row, "gpu": job.gpu.index} for row in child_rows]
            entry.update(facts, gpu=job.gpu.index, rows=child_rows)
            rows += child_rows
            lines += [head, "", text.rstrip(), ""]
        else:
            log = job.out / "bench.log"
            tail = log.read_text().splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
            lines += [f"{head}: FAILED (exit {code}); the end of {log}:", "", *("    " + t for t in tail), ""]
        per_gpu.append(entry)
    return "\n".join(lines), {"wall_s": wall_s, "gpus": per_gpu, "rows": rows}


def bench_on_gpus(argv: Sequence[str], models: Sequence[str], gpus: Sequence[Gpu], out: str | None) -> int:
    """The whole fan-out; writes bench.md and bench.json beside the per-GPU directories. 0 when every GPU ran."""
    out_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="gemma-oracle-bench-"))
    jobs = bench_jobs(argv, models, gpus, out_dir)
    start = time.perf_counter()
    codes = run_jobs(jobs)
    text, combined = report(jobs, codes, time.perf_counter() - start)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.md").write_text(text + "\n")
    (out_dir / "bench.json").write_text(json.dumps(combined, indent=1))
    print(text)
    print(f"per-GPU logs and results under {out_dir}", file=sys.stderr)
    return 0 if all(code == 0 for code in codes) else 1
