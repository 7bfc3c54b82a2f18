"""Recorded runs for the store, report and regression tests, built in the tests themselves.

Oracle rows are real golden comparisons (gemma_oracle.oracles.single_vs_batched) of a toy engine whose logits depend
only on its own sequence's history, so batched == single-user exactly; `broken_n` makes it add 1.0 to every
logit of batch row 0 on every decode call of that batch size: one injected wiring bug, 4 failing
comparisons per broken case (decode steps 1..4; the prefill row is untouched). Bench rows carry chosen
numbers; metadata is written by hand so a test decides the device and backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma_oracle.oracles.compare import FLOAT64_POLICY
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched
from gemma_oracle.reports.records import BenchRecord, OpProfileRecord, OracleRecord, RouteRecord, oracle_records
from gemma_oracle.reports.run_meta import RunMeta
from gemma_oracle.reports.store import RunWriter

VOCAB = 12
T_STEPS = 4  # decode steps per sequence: T + 1 = 5 comparisons per sequence
PROMPTS = [[2, 5, 7], [2, 9], [2, 3, 3, 8], [2, 11, 4, 6, 1]]
FORCED = [[3, 4, 5, 6], [7, 8, 9, 10], [4, 4, 4, 4], [1, 2, 3, 4]]
GPU = "NVIDIA H100 80GB HBM3"
CPU = "CPU: test (2 cores)"


def _row(history: list[int]) -> np.ndarray:
    rng = np.random.default_rng([len(history)] + history)
    return rng.standard_normal(VOCAB)


class _Seq:
    def __init__(self):
        self.history: list[int] = []


class ToyEngine:
    vocab_size = VOCAB

    def __init__(self, broken_n: int | None = None):
        self.name = "toy"
        self.broken_n = broken_n

    def new_sequence(self):
        return _Seq()

    def prefill(self, seq, tokens):
        seq.history.extend(int(t) for t in tokens)
        return _row(seq.history)

    def decode(self, seqs, tokens):
        rows = []
        for seq, tok in zip(seqs, tokens):
            seq.history.append(int(tok))
            rows.append(_row(seq.history))
        out = np.stack(rows)
        if len(seqs) == self.broken_n:
            out[0] += 1.0
        return out


def golden_records(fixture: str, n_list=(1, 2, 3), *, broken_n: int | None = None, suite: str = "synthetic",
                   backend: str = "numpy64", route: str = "none") -> list[OracleRecord]:
    engine = ToyEngine(broken_n)
    rows = []
    for n in n_list:
        result = golden_single_vs_batched(engine, PROMPTS[:n], FORCED[:n], policy=FLOAT64_POLICY)
        rows += oracle_records(result, test_id=f"test::{fixture}-n{n}", suite=suite, fixture=fixture,
                               backend=backend, route=route)
    return rows


def bench_row(*, model: str = "m-q4_k_m", route: str = "batch-invariant", n: int = 8, tokens_per_s: float = 1000.0,
              spread_pct: float = 1.0, device: str = GPU, backend: str = "cupy", roofline_tokens_per_s: float = 4000.0,
              timing: str = "cuda-graph") -> BenchRecord:
    step = n / tokens_per_s
    return BenchRecord(
        model=model, backend=backend, device=device, route=route, n=n, timing=timing, context=512, prompt_lens="16",
        mean_position=100.0, warmup=4, steps=32, repeats=5, step_ms=step * 1e3, step_ms_min=step * 1e3,
        step_ms_max=step * 1e3 * (1 + spread_pct / 100), spread_pct=spread_pct, tokens_per_s=tokens_per_s,
        per_seq_tokens_per_s=tokens_per_s / n, weight_bytes=8_600_000, kv_bytes=n * 100_000, read_gb_s=2900.0,
        roofline_tokens_per_s=roofline_tokens_per_s, roofline_pct=100 * tokens_per_s / roofline_tokens_per_s,
        routes="ws:47 gemm_n:1", gpu_index=0 if backend == "cupy" else None)


def op_row(op: str, share: float, *, n: int = 8, model: str = "m-q4_k_m",
           route: str = "batch-invariant") -> OpProfileRecord:
    return OpProfileRecord(model=model, backend="cupy", route=route, n=n, op=op, calls=6, ms=share / 100,
                           share_pct=share, weight_bytes=0, timing="cuda-events-eager")


def route_row(tensor: str, kernel: str, *, n: int = 8, route: str = "auto") -> RouteRecord:
    return RouteRecord(model="m-q4_k_m", route=route, n=n, tensor=tensor, role=tensor.split(".")[-2],
                       type_name="Q4_K", rows=2048, cols=256, kernel=kernel)


def meta(run_id: str, *, created: str, device: str = GPU, backend: str = "cupy", kind: str = "nightly") -> RunMeta:
    gpu = backend == "cupy"
    return RunMeta(run_id=run_id, kind=kind, created=created, git_commit="0" * 40, git_dirty=False, backend=backend,
                   device=device, device_kind="gpu" if gpu else "cpu", driver="580.0" if gpu else "",
                   packages={"numpy": "2"}, python="3.11", platform="test")


def store_run(root: Path, run_id: str, *, created: str, oracle=(), bench=(), op_profile=(), routes=(),
              **meta_kw) -> Path:
    writer = RunWriter(root / run_id)
    for table, rows in (("oracle", oracle), ("bench", bench), ("op_profile", op_profile), ("routes", routes)):
        writer.write_table(table, list(rows))
    writer.write_meta(meta(run_id, created=created, **meta_kw))
    return writer.dir
