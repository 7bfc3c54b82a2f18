"""What the bench needs from a device, one class per engine backend: the engine, a step clock, the
streaming-read bandwidth, the bytes a step reads, the route table and a per-op profiling pass.

`CpuDevice` runs the float64 numpy engine on the host clock; `CudaDevice` runs the CuPy engine and times
with CUDA events (around captured-graph replays unless the bench asks for eager steps).
"""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gemma_oracle.reports.run_meta import device_info

from gemma_oracle.harness.perf.op_profile import STEP, CudaSpans, HostSpans, TimedOps, numpy_matmul_weights, tensor_role


class CpuDevice:
    backend = "numpy64"
    timing = "host-clock"
    profile_timing = "host-clock"
    gpu_index = None

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = device_info(self.backend)[0]
        self.kv_itemsize = np.dtype(np.float64).itemsize

    def read_bandwidth_gb_s(self, nbytes: int | None = None, repeats: int = 5) -> float:
        return host_read_bandwidth_gb_s(HOST_PROBE_BYTES if nbytes is None else nbytes, repeats)

    def make_engine(self, path, route_mode: str):
        from gemma_oracle.engine.engine import GemmaEngine

        return GemmaEngine(path, self.backend)

    prefill_mode = None  # no route modes on the numpy backend

    def set_route_mode(self, engine, route_mode: str) -> None:
        """The numpy backend has no route modes (bench.NO_ROUTE only)."""

    def seconds_per_step(self, step, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps

    def weight_bytes(self, engine) -> int:
        return sum(nbytes for _, nbytes in numpy_matmul_weights(engine.model.w).values())

    def role_weight_bytes(self, engine) -> dict[str, int]:
        out: dict[str, int] = {}
        for role, nbytes in numpy_matmul_weights(engine.model.w).values():
            out[role] = out.get(role, 0) + nbytes
        return out

    def route_table(self, engine, n: int) -> list:
        return []  # the numpy engine has one matmul path

    def profile(self, engine, seqs, tokens, passes: int) -> dict[str, tuple[int, float]]:
        """``passes`` decode steps with the model's ops timed (they advance the sequences like any step)."""
        spans = HostSpans()
        plain = engine.model.ops
        engine.model.ops = TimedOps(plain, spans, numpy_matmul_weights(engine.model.w))
        try:
            for _ in range(passes):
                with spans(STEP):
                    engine.decode(seqs, tokens)
        finally:
            engine.model.ops = plain
        return spans.seconds()


MAX_PREFILL_CHUNK = 512  # prompt rows per prefill forward on the GPU (activations [rows, ffn] stay small)


class CudaDevice:
    backend = "cupy"
    profile_timing = "cuda-events-eager"

    def __init__(self, cfg):
        import cupy as cp

        self.cp, self.cfg = cp, cfg
        self.name = device_info(self.backend)[0]
        self.gpu_index = int(cp.cuda.Device().id)
        self.timing = "cuda-graph" if cfg.use_graphs else "cuda-eager"
        self.kv_itemsize = np.dtype(cfg.kv_dtype).itemsize

    def read_bandwidth_gb_s(self, nbytes: int = 2 << 30, repeats: int = 5) -> float:
        return gpu_read_bandwidth_gb_s(nbytes, repeats)

    def make_engine(self, path, route_mode: str):
        from gemma_oracle.engine.gpu_engine import CupyEngine

        # each prompt in one prefill forward (the engine's default chunk of 8 rows made a 178-token prompt 23 eager
        # forwards, ~1 s a sequence on a 12B-shaped model: the bench of both stand-ins ran past 8 minutes in prefill)
        chunk = min(max(self.cfg.prompt_lens), MAX_PREFILL_CHUNK)
        return CupyEngine(path, kv_dtype=self.cfg.kv_dtype, max_sequences=max(self.cfg.n_list) + 1,
                          max_context=self.cfg.context, use_graphs=self.cfg.use_graphs, route_mode=route_mode,
                          prefill_chunk=chunk)

    prefill_mode = "auto"  # the bench's prompts, whatever mode is timed (gemma_oracle.engine.routing: decode-MMQ for big chunks)

    def set_route_mode(self, engine, route_mode: str) -> None:
        engine.set_route_mode(route_mode)

    def seconds_per_step(self, step, steps: int) -> float:
        # Each decode is one graph replay plus the logits read-back (the step's only host synchronisation).
        cp = self.cp
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(steps):
            step()
        stop.record()
        stop.synchronize()
        return cp.cuda.get_elapsed_time(start, stop) / 1e3 / steps

    def weight_bytes(self, engine) -> int:
        return gpu_step_weight_bytes(engine)

    def role_weight_bytes(self, engine) -> dict[str, int]:
        out: dict[str, int] = {}
        for tensor, *_ in engine.route_table(1):  # the matrices a step multiplies by, as stored (GGUF blocks)
            role = tensor_role(tensor)
            out[role] = out.get(role, 0) + int(engine.w[tensor].raw.nbytes)
        return out

    def route_table(self, engine, n: int) -> list:
        return engine.route_table(n)

    def profile(self, engine, seqs, tokens, passes: int) -> dict[str, tuple[int, float]]:
        """``passes`` eager forwards of the step (CUDA events around each matmul, attention, norm and RoPE launch, so
        host launch gaps inside a span count too: shares, not graph-replay times). The forwards write K/V at
        the sequences' next position without advancing them; the next decode overwrites it."""
        spans = CudaSpans()
        positions, slots = [s.length for s in seqs], [s.slot for s in seqs]
        engine.op_spans = spans
        try:
            for _ in range(passes):
                with spans(STEP):
                    engine.forward(tokens, positions, slots, list(range(len(seqs))))
        finally:
            engine.op_spans = None
        return spans.seconds()


DEVICES = {"numpy64": CpuDevice, "cupy": CudaDevice}


def gpu_step_weight_bytes(engine) -> int:
    """Bytes of the matrices a CupyEngine step multiplies by, as stored (GGUF blocks): every byte is read once."""
    return sum(int(engine.w[tensor].raw.nbytes) for tensor, *_ in engine.route_table(1))


def gpu_read_bandwidth_gb_s(nbytes: int = 2 << 30, repeats: int = 5) -> float:
    """Streaming-read bandwidth of the current GPU: a float32 sum over ``nbytes`` of device memory (read once),
    median of ``repeats``."""
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


# Host probe buffer: 1 GiB, 32x the 32 MiB last-level cache of the 2-core CI box (and 4x a 256 MiB server L3), so
# every repeat streams from DRAM. The old probe (one thread, 256 MiB, the median of 5: a typical moment of a shared
# host, not its best) was beaten by the numpy engine's multi-threaded BLAS (t/s at 165 % of its "ceiling").
HOST_PROBE_BYTES = 1 << 30


def host_read_bandwidth_gb_s(nbytes: int = HOST_PROBE_BYTES, repeats: int = 5, threads: int | None = None) -> float:
    """Streaming-read bandwidth of host memory: a float64 sum over ``nbytes``, split over ``threads`` (default:
    every core; numpy releases the GIL in the reduction) so every core's load path is busy, and on one thread
    (on a host whose other cores are busy one stream can beat a split that waits for its slowest part); the best
    of ``repeats`` of each: a ceiling is the fastest the memory has been seen to go, not a typical moment."""
    threads = threads or os.cpu_count() or 1
    x = np.ones(nbytes // 8)
    chunks = np.array_split(x, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, chunks))  # pages touched, threads started
        for _ in range(repeats):
            for read in (lambda: list(pool.map(np.sum, chunks)), x.sum):
                t0 = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - t0)
    del x, chunks
    return nbytes / best / 1e9


def make_device(backend: str, cfg):
    try:
        return DEVICES[backend](cfg)
    except KeyError:
        raise ValueError(f"the bench runs on {sorted(DEVICES)}, not {backend!r}") from None
