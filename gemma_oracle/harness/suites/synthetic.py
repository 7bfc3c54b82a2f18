"""The synthetic oracle suite as data: which fixtures, which batch sizes, which sequences, which policy.

Used by the pytest suite (tests/test_golden_synthetic.py) and by `gemma-oracle oracle` (the main job),
so both run exactly the same comparisons.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

from gemma_oracle.oracles.calibrated import calibrated_single_vs_batched
from gemma_oracle.engine.protocol import describe_engine
from gemma_oracle.engine.routing import DECODE_MMQ, routes_vary_with_n
from gemma_oracle.oracles.compare import (CALIBRATED_POLICY, FLOAT64_POLICY, OUTSIDE_F32_POLICY, OUTSIDE_QUANT_POLICY,
                                         CalibratedPolicy, Policy, exact)
from gemma_oracle.oracles.single_vs_batched import GoldenResult, RefCache, golden_single_vs_batched
from gemma_oracle.reports.records import NO_ROUTE

from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.harness.fixtures.quant_mix import VARIANTS
from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab
from gemma_oracle.harness.suites.inputs import (DECODE_STEPS, PLAN_ROWS, SEQUENCE_SEED, InputPlan, batch_sizes,
                                                legacy_lengths, make_sequences, plans)

# Batch sizes (gemma_oracle.harness.suites.inputs.batch_sizes): both sides of every switch point a GPU router has (WS
# capacities 2/4/8/16, the decode-MMQ floors, the MMQ tile rules, GEMM-N beyond 16), 2 and 3, plus a tail that is not
# a power of two (6). The CPU stops at 17 (the first N past every WS capacity): beyond it only GPU tiles change.
N_LIST = batch_sizes(17, extra=(6,))

# Policy per engine backend. numpy64 is float64 throughout: batched and single-user differ only by BLAS
# blocking (~1e-16 relative), i.e. NMSE ~1e-30; 1e-24 leaves six orders of margin and still catches any
# real wiring difference (one wrong row is NMSE ~1).
# The CuPy engine's WS/GEMM-N matvecs are bitwise equal to their N = 1 path and its attention reduces each
# row over its own sequence only, so batched must equal single-user exactly.
POLICIES: dict[str, Policy] = {"numpy64": FLOAT64_POLICY, "cupy": exact()}
# The fast (auto) mode, which is not bitwise: CALIBRATED_POLICY (gemma_oracle.oracles.compare, with its provenance),
# against the float64 engine on the same file (REFERENCE_BACKEND). It replaced the fixed bounds MMQ_POLICY /
# SEED_MMQ_POLICY, which passed planted semantic bugs (gemma_oracle/harness/suites/planted.py).
REFERENCE_BACKEND = "numpy64"
# The GPU suite goes to N = 32 (GEMM-N beyond every WS capacity, the bn32 / two-bn16 MMQ tiles from 17 and 25).
GPU_N_LIST = batch_sizes(32, extra=(32,))
# The most sequences one case can batch: every plan describes this many prompts, so a case's N is 1..MAX_N.
MAX_N = PLAN_ROWS
assert max(GPU_N_LIST) <= MAX_N

# Which input plan (gemma_oracle.harness.suites.inputs.plans) runs where: chosen by coverage, not every plan on every
# preset x variant x N. Every plan runs on every preset whose context reaches its boundaries (keqv-mixed and
# keqv-all-global have no sliding plans: their window is their context; keqv-window24 has them all).
#   short          every variant x every N of the list: the route switch points on every quant type (the suite's
#                  original cases, ids unchanged: `preset-variant-nN`)
#   *-mixed        f32 (the float routes) and q4_k_m (K-quant mix: decode-MMQ in auto mode on the GPU)
#   *-equal        q4_0 (equal lengths are the easy case; one more quant type sees the boundaries)
#   far-mixed      q8_0 (long prompts: the dearest plan, once per preset)
# at the boundary batch sizes: N = 2, 3 (where the mixed-length bugs first fire) and 5 (the first N of decode-MMQ's
# N >= 5 tiles and of WS capacity 8) on the CPU; every N >= 2 of GPU_N_LIST on the GPU (the route switch points).
PLAN_VARIANTS: dict[str, tuple[str, ...] | None] = {
    "short": None, "sliding-mixed": ("f32", "q4_k_m"), "growth-mixed": ("f32", "q4_k_m"),
    "sliding-equal": ("q4_0",), "growth-equal": ("q4_0",), "far-mixed": ("q8_0",),
}
EVERY_N_PLANS = ("short",)
BOUNDARY_N = (2, 3, 5)
GPU_BOUNDARY_N = tuple(n for n in GPU_N_LIST if n >= 2)


@functools.lru_cache(maxsize=None)
def preset_plans(preset: str) -> tuple[InputPlan, ...]:
    """The input plans of a preset, from the config its fixture is built with."""
    return plans(PRESETS[preset].config(len(small_vocab().tokens)))


@dataclass(frozen=True)
class SuiteCase:
    preset: str
    variant: str
    n: int
    plan: str = "short"

    @property
    def id(self) -> str:
        middle = "" if self.plan == "short" else f"-{self.plan}"
        return f"{self.preset}-{self.variant}{middle}-n{self.n}"

    @property
    def fixture(self) -> str:
        return f"{self.preset}-{self.variant}"

    @property
    def input_plan(self) -> InputPlan:
        return next(p for p in preset_plans(self.preset) if p.name == self.plan)

    @property
    def steps(self) -> int:
        return self.input_plan.steps


def cases(presets=None, variants=None, n_list=N_LIST, boundary_n=BOUNDARY_N) -> list[SuiteCase]:
    """The suite's cases, grouped by fixture (an engine is loaded once per group). `n_list`: the short plan's batch
    sizes; `boundary_n`: the other plans' (those also in n_list), see PLAN_VARIANTS."""
    bad = [n for n in (*n_list, *boundary_n) if not 1 <= n <= MAX_N]
    if bad:  # prompts[:n] would silently run fewer sequences than asked (or none)
        raise ValueError(f"batch sizes {bad}: a case batches 1..{MAX_N} sequences")
    out = []
    for p in presets or sorted(PRESETS):
        for v in variants or VARIANTS:
            for plan in preset_plans(p):
                chosen = PLAN_VARIANTS[plan.name]
                if chosen is not None and v not in chosen:
                    continue
                ns = n_list if plan.name in EVERY_N_PLANS else [n for n in n_list if n in boundary_n]
                out += [SuiteCase(p, v, n, plan.name) for n in ns]
    return out


def sequences(vocab_size: int, count: int = MAX_N, *, seed: int = SEQUENCE_SEED):
    """The short plan's prompts: `count` prompts of different lengths (2..26 tokens; longer than every sliding ring
    of the windows <= 16, window + prefill chunk - 1 <= 23, so those rings wrap) and a forced continuation of
    DECODE_STEPS tokens each. Tokens avoid the special ids 0..3. Prompts of other lengths:
    gemma_oracle.harness.suites.inputs.make_sequences."""
    return make_sequences(vocab_size, legacy_lengths(count), DECODE_STEPS, seed=seed)


@functools.lru_cache(maxsize=4)  # the GPU nightly's two route modes, auto's decode-MMQ twin, the float64 reference
def engine_for(preset: str, variant: str, backend: str, route_mode: str | None = None):
    """route_mode: gemma_oracle.engine.routing mode of a GPU engine (None: its default); engines without routes take
    None. ``backend``: one of our backends (numpy64, numpy32, cupy) or an --engine spec (gemma_oracle.engine.registry),
    given slots for the suite's largest batch."""
    from gemma_oracle.engine import factory, registry

    path = fixture_path(preset, variant)
    if backend not in factory.ENGINES:
        return registry.make_engine(backend, path, slots=MAX_N)
    options = {} if route_mode is None else {"route_mode": route_mode}
    return factory.make_engine(backend, path, memo_prefill=True, **options)


def policy_for(engine, backend: str) -> Policy | CalibratedPolicy:
    """The verdict rule for the engine's route mode: a mode whose routes vary with N (auto: decode-MMQ for some N
    only; packed, whose matrices without a packed copy route as auto) is judged against the noise of decode-MMQ's
    int8 activations (CALIBRATED_POLICY, which needs a reference engine: see `judge`); every mode that routes by
    shape alone (batch-invariant, packed-invariant, the forced ones) and the reference engines are held to POLICIES
    (exact on the GPU); any other engine (an --engine spec) by `policy_for_engine`."""
    if backend not in POLICIES:
        return policy_for_engine(engine, variant_of(engine))
    return CALIBRATED_POLICY if routes_vary_with_n(getattr(engine, "route_mode", "")) else POLICIES[backend]


def variant_of(engine) -> str:
    """The quant variant of a synthetic fixture an engine runs on, from its file name (preset-variant-s<seed>-...);
    "real" for any other file."""
    name = str(describe_engine(engine).get("model", "") or getattr(engine, "name", ""))
    for v in sorted(VARIANTS, key=len, reverse=True):
        if f"-{v}-s" in name:
            return v
    return "real"


def policy_for_engine(engine, variant: str) -> Policy | CalibratedPolicy:
    """The policy any engine is judged by, from what it says it is (``describe()``): our float64 engine by
    FLOAT64_POLICY, our GPU engine exactly in a batch-invariant mode and by the calibrated rule in auto mode; every
    other engine (llama.cpp, a served engine, a peer process, the broken control) by the outside-engine policy of
    its weights, float or quantized (OUTSIDE_F32_POLICY / OUTSIDE_QUANT_POLICY, gemma_oracle.oracles.compare)."""
    info = describe_engine(engine)
    kind = info.get("engine", "")
    if kind == "gemma-oracle numpy":
        return POLICIES.get(info.get("dtype"), FLOAT64_POLICY)
    if kind == "gemma-oracle cupy":
        return CALIBRATED_POLICY if routes_vary_with_n(info.get("route_mode", "")) else exact()
    return OUTSIDE_F32_POLICY if variant in ("f32", "f16", "bf16") else OUTSIDE_QUANT_POLICY


def judge(engine, backend: str, prompts, forced, *, reference, cache: RefCache | None = None,
          single=None) -> GoldenResult:
    """The golden comparison under `policy_for`: a calibrated policy runs the three-sided comparison against
    `reference()` (a zero-argument callable giving the float64 engine on the same file, built only when needed);
    the others compare batched with single-user directly."""
    return judge_with(engine, policy_for(engine, backend), prompts, forced, reference=reference, cache=cache,
                      single=single)


def judge_with(engine, policy: Policy | CalibratedPolicy, prompts, forced, *, reference,
               cache: RefCache | None = None, single=None) -> GoldenResult:
    """The golden comparison under ``policy``: the three-sided calibrated comparison against ``reference()`` for a
    CalibratedPolicy, batched against single-user directly otherwise. ``single()``, when given, builds the engine
    that runs each sequence alone on the batch's route (`single_user_twin`); default the candidate itself."""
    if isinstance(policy, CalibratedPolicy):
        return calibrated_single_vs_batched(engine, prompts, forced, reference_engine=reference(), policy=policy,
                                            cache=cache, single_engine=single() if single is not None else None)
    return golden_single_vs_batched(engine, prompts, forced, policy=policy, cache=cache)


def routes_in_auto_mode(engine) -> bool:
    """Whether the engine's routes vary with N (auto or packed mode): its single-user side is then a twin."""
    return routes_vary_with_n(describe_engine(engine).get("route_mode", ""))


def single_user_twin(path, kind: str = "cupy"):
    """Our GPU engine on ``path`` pinned to decode-MMQ (forced), the route with int8 activation noise: the single-user
    side of an auto-mode engine's calibrated comparison (gemma_oracle.oracles.calibrated.calibrated_single_vs_batched
    explains why)."""
    from gemma_oracle.engine import factory
    from gemma_oracle.engine.routing import DECODE_MMQ, routes_vary_with_n

    return factory.make_engine(kind, path, route_mode=DECODE_MMQ)


def routes_taken(engine, n: int) -> str:
    """Kernels serving the matmuls of an N-row step, e.g. "gemm_n:1 ws:47"; "" for an engine without routes."""
    if not hasattr(engine, "route_table"):
        return ""
    counts = Counter(route for *_, route in engine.route_table(n))
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


_REFERENCE_MEMO: dict = {}


def run_case(case: SuiteCase, backend: str, route_mode: str | None = None) -> GoldenResult:
    engine = engine_for(case.preset, case.variant, backend, route_mode)
    plan = case.input_plan
    prompts, forced = make_sequences(engine.vocab_size, plan.lengths, plan.steps)
    single = (lambda: engine_for(case.preset, case.variant, backend, DECODE_MMQ)) if routes_in_auto_mode(engine) else None
    return judge(engine, backend, prompts[: case.n], forced[: case.n], cache=_REFERENCE_MEMO,
                 reference=lambda: engine_for(case.preset, case.variant, REFERENCE_BACKEND), single=single)


def run_pinned_case(case: SuiteCase, backend: str = "cupy") -> GoldenResult:
    """The auto mode's pinned contract (gemma_oracle.oracles.pinned) on one case: the batch of N bitwise against
    single-user decode on the routes of an N-row step (route mode auto@N)."""
    from gemma_oracle.engine.routing import pinned_mode
    from gemma_oracle.oracles.pinned import pinned_single_vs_batched

    engine = engine_for(case.preset, case.variant, backend, "auto")
    plan = case.input_plan
    prompts, forced = make_sequences(engine.vocab_size, plan.lengths, plan.steps)
    return pinned_single_vs_batched(engine, prompts[: case.n], forced[: case.n], cache=_REFERENCE_MEMO,
                                    pinned=lambda n: engine_for(case.preset, case.variant, backend, pinned_mode(n)))


def record_context(case: SuiteCase, backend: str, route_mode: str | None = None) -> dict:
    """Where a case's result came from, as the result store's columns (gemma_oracle.reports.records.OracleRecord)."""
    engine = engine_for(case.preset, case.variant, backend, route_mode)
    return {"suite": "synthetic", "fixture": case.fixture, "backend": backend,
            "route": getattr(engine, "route_mode", NO_ROUTE), "routes_taken": routes_taken(engine, case.n)}
