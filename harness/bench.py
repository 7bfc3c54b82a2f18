"""`gemma-oracle bench`, first version: decode tokens/s of the CuPy engine beside the device's read bandwidth.

Timing: CUDA events around `steps` decode steps (after `warmup` steps, which also capture the step's CUDA
graph), median over `repeats`. Each step is the engine protocol's decode: upload of tokens/positions, one
graph replay, and the logits read-back. `--eager` times the uncaptured forward instead.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass


@dataclass
class BenchRow:
    model: str
    n: int
    step_ms: float
    tokens_per_s: float
    per_seq_tokens_per_s: float
    weight_bytes: int
    read_gb_s: float
    roofline_pct: float
    mode: str = "eager"
    routes: str = ""  # matmuls per route at this N, e.g. "ws:47 gemm_n:1"


def read_bandwidth_gb_s(nbytes: int = 2 << 30, repeats: int = 5) -> float:
    """Streaming-read bandwidth: a float32 sum over `nbytes` of device memory (read once), median of repeats."""
    import cupy as cp

    x = cp.ones(nbytes // 4, dtype=cp.float32)
    cp.sum(x).item()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        cp.sum(x)
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    del x
    return nbytes / statistics.median(times) / 1e9


def bench_decode(path, n_list=(1, 2, 4, 8, 16, 32), *, steps: int = 32, warmup: int = 4, repeats: int = 3,
                 prompt_len: int = 16, kv_dtype: str = "float16", bandwidth: float | None = None,
                 use_graphs: bool = True, route_mode: str | None = None) -> list[BenchRow]:
    import cupy as cp
    import numpy as np

    from engine.gpu_engine import CupyEngine

    engine = CupyEngine(path, kv_dtype=kv_dtype, max_sequences=max(n_list) + 1, use_graphs=use_graphs,
                        route_mode=route_mode)
    bw = bandwidth or read_bandwidth_gb_s()
    weight_bytes = sum(int(m.raw.nbytes) for m in engine.w.values() if hasattr(m, "raw"))
    if engine.config.ple_width:  # only one row of each embedding table is read per token
        for name in ("per_layer_token_embd.weight",):
            m = engine.w[name]
            weight_bytes -= int(m.raw.nbytes)
    if not engine.config.tied_output:
        weight_bytes -= int(engine.w["token_embd.weight"].raw.nbytes)
    rng = np.random.default_rng(0)
    rows = []
    for n in n_list:
        seqs = [engine.new_sequence() for _ in range(n)]
        for s in seqs:
            engine.prefill(s, [2] + [int(t) for t in rng.integers(4, engine.vocab_size, size=prompt_len - 1)])
        tokens = [int(t) for t in rng.integers(4, engine.vocab_size, size=n)]
        for _ in range(warmup):
            engine.decode(seqs, tokens)
        times = []
        for _ in range(repeats):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(steps):
                engine.decode(seqs, tokens)
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3 / steps)
        step = statistics.median(times)
        achieved = weight_bytes / step / 1e9
        counts: dict[str, int] = {}
        for *_, route in engine.route_table(n):
            counts[route] = counts.get(route, 0) + 1
        rows.append(BenchRow(str(getattr(path, "name", path)), n, step * 1e3, n / step, 1 / step, weight_bytes,
                             achieved, 100 * achieved / bw, "graph" if use_graphs else "eager",
                             " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))))
        del seqs
    return rows


def format_table(rows: list[BenchRow], bandwidth: float, device: str) -> str:
    lines = [f"device: {device}; streaming read bandwidth {bandwidth:.0f} GB/s; mode {rows[0].mode if rows else '-'}",
             "", "| model | N | step ms | t/s | t/s per seq | weight MB | GB/s (weights) | % of read BW | routes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.n} | {r.step_ms:.3f} | {r.tokens_per_s:.1f} | {r.per_seq_tokens_per_s:.1f} | "
                     f"{r.weight_bytes / 1e6:.1f} | {r.read_gb_s:.1f} | {r.roofline_pct:.2f} | {r.routes} |")
    return "\n".join(lines)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
