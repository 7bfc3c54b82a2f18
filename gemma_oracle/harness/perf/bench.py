"""`gemma-oracle bench`: decode tokens/s per model x route mode x N, beside the roofline the device allows.

For each (model, route mode) one engine is built; for each N, N sequences are prefilled with prompts of the
configured lengths, `warmup` steps run (on the GPU they also capture the step's CUDA graph), then `repeats`
timed runs of `steps` decode steps each; the median step time is reported with the runs' spread. The
device's streaming-read bandwidth is measured once per run (harness/bench_devices.py), and each N's
weight and KV bytes give the memory-only ceiling (harness/roofline.py). An eager profiling pass per N splits
a step's time over op classes (harness/op_profile.py), and the route table says which kernel served each
matmul. On the CPU the same loop runs the numpy backend (host clock, no routes).
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gemma_oracle.engine import routing
from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.reports.records import NO_ROUTE, BenchRecord, OpProfileRecord, RouteRecord
from gemma_oracle.reports.tables import perf_flags

from gemma_oracle.harness.perf.op_profile import ProfileContext, profile_records, tensor_role
from gemma_oracle.harness.suites.synthetic import routes_taken
from gemma_oracle.harness.perf.roofline import mean_kv_read_bytes, roofline_tokens_per_s


# The largest batch the bench accepts: 8x the nightly's largest N; KV caches of N x context positions grow with it,
# and an N in the tens of thousands ran out of host memory instead of saying no.
MAX_N = 256


class BenchConfigError(GemmaOracleError, ValueError):
    """A bench setting that cannot work; the message names the option and what it needs."""


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]  # preset names, real-suite names (gemma_oracle.harness.suites.real) or GGUF paths
    variant: str = "q4_k_m"  # quant variant of preset models
    n_list: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    route_modes: tuple[str, ...] = ("batch-invariant",)  # gemma_oracle.engine.routing.MODES; NO_ROUTE for the numpy backend
    context: int = 512  # positions each sequence's KV cache holds (capped at the model's context length)
    prompt_lens: tuple[int, ...] = (16,)  # prompt lengths, cycled over the N sequences
    warmup: int = 4
    steps: int = 32
    repeats: int = 5
    kv_dtype: str = "float16"  # GPU KV cache dtype
    use_graphs: bool = True  # GPU: time CUDA-graph replays (False: the eager forward)
    profile: bool = True
    profile_passes: int = 3
    seed: int = 0

    def __post_init__(self):
        def need(ok: bool, option: str, what: str):
            if not ok:
                raise BenchConfigError(f"bench option {option}: {what}")

        need(len(self.models) > 0, "--model", "name at least one model")
        need(len(self.n_list) > 0 and all(1 <= n <= MAX_N for n in self.n_list), "--n",
             f"batch sizes 1..{MAX_N}, got {self.n_list}")
        need(len(self.route_modes) > 0 and all(m in routing.MODES or m == NO_ROUTE for m in self.route_modes),
             "--route", f"modes from {routing.MODES}, got {self.route_modes}")
        need(self.steps >= 1 and self.repeats >= 1 and self.warmup >= 0 and self.profile_passes >= 1,
             "--steps/--repeats/--warmup", "steps >= 1, repeats >= 1, warmup >= 0")
        need(len(self.prompt_lens) > 0 and all(p >= 1 for p in self.prompt_lens), "--prompt-len",
             f"lengths >= 1, got {self.prompt_lens}")
        need(self.context >= self.positions_needed, "--context",
             f"{self.context} positions cannot hold the longest prompt ({max(self.prompt_lens)}) + warmup "
             f"({self.warmup}) + repeats x steps ({self.repeats} x {self.steps}) = {self.positions_needed}")

    @property
    def positions_needed(self) -> int:
        return max(self.prompt_lens) + self.warmup + self.repeats * self.steps


@dataclass
class BenchResult:
    device: str
    read_gb_s: float
    rows: list[BenchRecord] = field(default_factory=list)
    op_profile: list[OpProfileRecord] = field(default_factory=list)
    routes: list[RouteRecord] = field(default_factory=list)


def resolve_model(model: str, variant: str) -> tuple[str, Path]:
    """(label, path) of a preset or 12B-shaped stand-in name, a real-suite name or a GGUF path. A stand-in is
    built in its own variant only, and its label says it is synthetic."""
    from gemma_oracle.harness.fixtures.presets import PRESETS
    from gemma_oracle.harness.suites.real import REAL_SUITES
    from gemma_oracle.harness.fixtures.standin import STANDINS

    if model in STANDINS:
        from gemma_oracle.harness.fixtures.cache import fixture_path

        return f"{model}-{STANDINS[model].variant} (synthetic)", fixture_path(model)
    if model in PRESETS:
        from gemma_oracle.harness.fixtures.cache import fixture_path

        return f"{model}-{variant}", fixture_path(model, variant)
    suites = {s.name: s for s in REAL_SUITES}
    if model in suites:
        reason = suites[model].missing()
        if reason:
            raise BenchConfigError(f"bench option --model {model}: {reason}")
        return model, suites[model].locate()
    path = Path(model)
    if not path.is_file():
        raise BenchConfigError(f"bench option --model {model}: not a preset ({', '.join(sorted(PRESETS) + sorted(STANDINS))}), "
                               f"a real model ({', '.join(sorted(suites))}) nor an existing GGUF file")
    return path.stem, path


def _measure(device, engine, cfg: BenchConfig, label: str, mode: str, n: int, bw: float, result: BenchResult) -> None:
    rng = np.random.default_rng(cfg.seed)
    vocab = engine.vocab_size
    seqs = [engine.new_sequence() for _ in range(n)]
    # prompts go through the device's prefill mode (GPU: auto, the int8 tile for these >= 17-row chunks): forced WS
    # would send every prefill chunk of every sequence through GEMM-N, minutes on a 12B-shaped model; the timed
    # decode steps below run in `mode`
    device.set_route_mode(engine, device.prefill_mode or mode)
    for i, s in enumerate(seqs):
        length = cfg.prompt_lens[i % len(cfg.prompt_lens)]
        engine.prefill(s, [2] + [int(t) for t in rng.integers(4, vocab, size=length - 1)])
    device.set_route_mode(engine, mode)
    tokens = [int(t) for t in rng.integers(4, vocab, size=n)]
    for _ in range(cfg.warmup):
        engine.decode(seqs, tokens)
    start = [s.length for s in seqs]
    times = [device.seconds_per_step(lambda: engine.decode(seqs, tokens), cfg.steps) for _ in range(cfg.repeats)]
    step = statistics.median(times)
    weight_bytes = device.weight_bytes(engine)
    kv_bytes = mean_kv_read_bytes(engine.config, start, cfg.repeats * cfg.steps, device.kv_itemsize)
    ceiling = roofline_tokens_per_s(n, bw, weight_bytes, kv_bytes)
    result.rows.append(BenchRecord(
        model=label, backend=device.backend, device=device.name, route=mode, n=n, timing=device.timing,
        context=cfg.context, prompt_lens=",".join(map(str, cfg.prompt_lens)),
        mean_position=float(np.mean(start)) + (cfg.repeats * cfg.steps - 1) / 2, warmup=cfg.warmup,
        steps=cfg.steps, repeats=cfg.repeats, step_ms=step * 1e3, step_ms_min=min(times) * 1e3,
        step_ms_max=max(times) * 1e3, spread_pct=100 * (max(times) - min(times)) / step,
        tokens_per_s=n / step, per_seq_tokens_per_s=1 / step, weight_bytes=int(weight_bytes),
        kv_bytes=int(round(kv_bytes)), read_gb_s=bw, roofline_tokens_per_s=ceiling,
        roofline_pct=100 * (n / step) / ceiling, routes=routes_taken(engine, n), gpu_index=device.gpu_index))
    for tensor, type_name, rows, cols, kernel in device.route_table(engine, n):
        result.routes.append(RouteRecord(model=label, route=mode, n=n, tensor=tensor, role=tensor_role(tensor),
                                         type_name=type_name, rows=rows, cols=cols, kernel=kernel))
    if cfg.profile:
        seconds = device.profile(engine, seqs, tokens, cfg.profile_passes)
        ctx = ProfileContext(model=label, backend=device.backend, route=mode, n=n, timing=device.profile_timing)
        result.op_profile += profile_records(seconds, cfg.profile_passes, ctx, device.role_weight_bytes(engine))


def _row_line(r: BenchRecord) -> str:
    """One measured row for the terminal, with the flags the report gives it (noisy, measurement error)."""
    flags = perf_flags(dataclasses.asdict(r))
    return (f"bench {r.model} {r.route} N={r.n}: {r.step_ms:.3f} ms/step, {r.tokens_per_s:.1f} t/s, "
            f"{r.roofline_pct:.1f} % of the {r.roofline_tokens_per_s:.0f} t/s ceiling [{r.routes}]"
            + (f" ({flags})" if flags else ""))


def run_bench(cfg: BenchConfig, backend: str, *, progress: bool | str = True, log=None) -> BenchResult:
    """Every model x route mode x N of ``cfg`` on ``backend`` ("numpy64" or "cupy"). ``log``: called with one line
    per measured (model, mode, N) as it completes, so a run cut off by a time limit still shows what it measured."""
    from gemma_oracle.harness.perf.devices import make_device
    from gemma_oracle.harness.progress import Progress

    device = make_device(backend, cfg)
    if backend != "cupy" and set(cfg.route_modes) != {NO_ROUTE}:
        raise BenchConfigError(f"bench option --route {' '.join(cfg.route_modes)}: route modes choose GPU kernels; "
                               f"the {backend} backend has none (leave --route out)")
    models = [resolve_model(m, cfg.variant) for m in cfg.models]
    bw = device.read_bandwidth_gb_s()
    result = BenchResult(device=device.name, read_gb_s=bw)
    bar = Progress(len(models) * len(cfg.route_modes) * len(cfg.n_list), "bench", progress, unit="N")
    with bar:
        for label, path in models:
            # one engine per model, its route mode switched between runs: the weights are read and uploaded once
            # (a 12B-shaped stand-in takes tens of seconds to load; once per mode, the bench ran past 8 minutes)
            engine = device.make_engine(path, cfg.route_modes[0])
            model_context = engine.config.context_length
            if model_context and model_context < cfg.positions_needed:
                raise BenchConfigError(
                    f"bench options --prompt-len/--warmup/--steps/--repeats: {label} holds {model_context} "
                    f"positions, the run needs {cfg.positions_needed}")
            for mode in cfg.route_modes:
                device.set_route_mode(engine, mode)
                for n in cfg.n_list:
                    bar.set_postfix_str(f"{label} {mode} N={n}")
                    _measure(device, engine, cfg, label, mode, n, bw, result)
                    if log is not None:
                        log(_row_line(result.rows[-1]))
                    bar.update()
            del engine
    return result
