"""`gemma-oracle check --engine SPEC`: any engine (ours, llama.cpp, a served OpenAI-compatible engine, a peer process)
through the oracle on chosen fixtures and batch sizes, one verdict class per engine x fixture x test x N.

A check is data (CheckPlan): engine specs (gemma_oracle.engine.registry), fixtures (a synthetic `preset/variant`, a
catalog name such as gemma3-270m, or a GGUF path), batch sizes and the tests to run: the golden sweep over N and the
tests from the field (gemma_oracle.oracles.field). Every engine is judged by the policy for what it is
(gemma_oracle.harness.suites.synthetic.policy_for_engine): our float64 engine by FLOAT64_POLICY, our GPU engine bitwise in batch-invariant mode and by the
calibrated rule in auto mode, an outside engine by the outside-engine policy of its fixture's weights (float or
quantized), each against the float64 engine on the same file. The run is stored like the nightly's (reports/store.py)
with the verdict table (reports/records.VerdictRecord) beside the rows, and rendered by the same report code.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gemma_oracle.engine import registry
from gemma_oracle.engine.protocol import describe_engine
from gemma_oracle.oracles.single_vs_batched import GoldenResult
from gemma_oracle.harness.suites.synthetic import (judge_with, policy_for_engine, preset_plans, routes_in_auto_mode,
                                                   single_user_twin)
from gemma_oracle.reports.records import OracleRecord, VerdictRecord, oracle_records
from gemma_oracle.reports.run_meta import collect_meta, utc_now
from gemma_oracle.reports.store import RunWriter, create_run_dir

DEFAULT_N = (1, 2, 4, 5, 8)  # the sizes where served engines were seen to break (4-8) and the first N past 4
DEFAULT_FIXTURES = ("keqv-window24/f32", "keqv-window24/q4_k_m", "g4-e2b-mini/q4_k_m")
DEFAULT_ROOT = Path("reports") / "checks"


@dataclass(frozen=True)
class Fixture:
    """A model file a check runs on: ``label`` for tables, ``variant`` (f32 / q4_k_m / ...; "real" for a real
    model) decides the outside-engine policy, ``preset`` is set for synthetic presets (their input plans)."""

    label: str
    path: Path
    variant: str
    preset: str | None = None


def resolve_fixture(name: str) -> Fixture:
    """``preset/variant`` (or ``preset-variant``) of a synthetic preset, a real-model catalog name, or a GGUF path."""
    from gemma_oracle.harness.fixtures.cache import fixture_path
    from gemma_oracle.harness.fixtures.presets import PRESETS
    from gemma_oracle.harness.fixtures.quant_mix import VARIANTS
    from gemma_oracle.harness.real import models
    from gemma_oracle.harness.suites.real import REAL_SUITES

    preset, sep, variant = name.partition("/")
    if not sep:
        for v in VARIANTS:
            if name.endswith("-" + v) and name[: -len(v) - 1] in PRESETS:
                preset, variant = name[: -len(v) - 1], v
                break
    if preset in PRESETS and variant:
        if variant not in VARIANTS:
            raise registry.EngineSpecError(f"fixture {name!r}: variant {variant!r} is not one of {', '.join(VARIANTS)}")
        return Fixture(f"{preset}-{variant}", fixture_path(preset, variant), variant, preset)
    for suite in REAL_SUITES:
        if name == suite.name:
            reason = suite.missing()
            if reason:
                raise registry.EngineSpecError(f"fixture {name!r}: {reason}")
            return Fixture(name, Path(suite.locate()), "real")
    resolved = models.resolve(name)  # a catalog name or a path; typed errors name what is missing
    return Fixture(resolved.label, resolved.path, "real")


@dataclass(frozen=True)
class CheckPlan:
    engines: tuple[str, ...]
    fixtures: tuple[str, ...] = DEFAULT_FIXTURES
    n_list: tuple[int, ...] = DEFAULT_N
    tests: tuple[str, ...] = ()  # () = every test in TESTS
    steps: int = 4
    seed: int = 20261206


@dataclass
class CheckContext:
    """What every test of one engine x fixture shares: the engine, its policy, the float64 reference (built on first
    use), the prompts and forced scripts, and the single-user memo."""

    engine: object
    fixture: Fixture
    policy: object
    reference: Callable[[], object]
    prompts: list[list[int]]
    forced: list[list[int]]
    seed: int
    n_list: tuple[int, ...] = (1,)
    single: Callable[[], object] | None = None  # auto mode: the decode-MMQ twin that runs each sequence alone
    memo: dict = field(default_factory=dict)


def sequences_for(fixture: Fixture, vocab_size: int, steps: int, count: int, seed: int):
    """Prompts of mixed lengths and forced scripts. On a synthetic preset whose sliding window is shorter than its
    context, the lengths cross the window and wrap the ring (the input plan `sliding-mixed`); elsewhere the suite's
    short plan (2..26 tokens); real models' own prompts first (gemma_oracle.harness.suites.real)."""
    from gemma_oracle.harness.suites.inputs import legacy_lengths, make_sequences
    from gemma_oracle.harness.suites.real import REAL_SUITES

    for suite in REAL_SUITES:
        if fixture.label == suite.name:
            return suite.sequences(vocab_size, count)
    lengths = legacy_lengths(count)
    if fixture.preset is not None:
        by_name = {p.name: p for p in preset_plans(fixture.preset)}
        if "sliding-mixed" in by_name:
            lengths = by_name["sliding-mixed"].lengths[:count]
    return make_sequences(vocab_size, lengths, steps, seed=seed)


def _sweep(ctx: CheckContext, n: int) -> GoldenResult | None:
    return judge_with(ctx.engine, ctx.policy, ctx.prompts[:n], ctx.forced[:n], reference=ctx.reference, cache=ctx.memo,
                      single=ctx.single)


def _built_once(make: Callable[[], object]) -> Callable[[], object]:
    built: list = []

    def get():
        if not built:
            built.append(make())
        return built[0]
    return get


def _judged(ctx: CheckContext) -> dict:
    """The policy arguments of a field test: the engine's policy, and under a calibrated one its third side (the
    float64 engine on the same file) and, in auto mode, the decode-MMQ twin that runs each sequence alone."""
    from gemma_oracle.oracles.compare import CalibratedPolicy

    if not isinstance(ctx.policy, CalibratedPolicy):
        return {"policy": ctx.policy}
    alone = {"reference_engine": ctx.single()} if ctx.single is not None else {}
    return {"policy": ctx.policy, "precise_engine": ctx.reference(), **alone}


def _needle(ctx: CheckContext, n: int) -> GoldenResult | None:
    from gemma_oracle.oracles.field import needle

    if n < 2:  # alone is the needle's reference
        return None
    # the needle is the shortest prompt: a row behind the others is where position bugs (RoPE of the longest row,
    # padded keys) show, and the others are drawn from all the rest, so every N sees a different company
    first = min(range(len(ctx.prompts)), key=lambda i: (len(ctx.prompts[i]), i))
    order = [first] + [i for i in range(len(ctx.prompts)) if i != first]
    return needle(ctx.engine, [ctx.prompts[i] for i in order], [ctx.forced[i] for i in order], n=n, trials=3,
                  seed=ctx.seed, cache=ctx.memo, **_judged(ctx))


def _composition(ctx: CheckContext, n: int) -> GoldenResult | None:
    from gemma_oracle.oracles.field import changing_composition

    if n < 2:
        return None
    return changing_composition(ctx.engine, ctx.prompts[:n], ctx.forced[:n], seed=ctx.seed, cache=ctx.memo,
                                **_judged(ctx))


def _decode_vs_prefill(ctx: CheckContext, n: int) -> GoldenResult | None:
    from gemma_oracle.oracles.field import decode_vs_prefill

    if n != ctx.n_list[0]:  # single-user paths, no batch: once per engine x fixture, on one sequence (N = 1)
        return None
    return decode_vs_prefill(ctx.engine, ctx.prompts[:1], ctx.forced[:1], cache=ctx.memo, **_judged(ctx))


def _determinism(ctx: CheckContext, n: int) -> GoldenResult | None:
    from gemma_oracle.oracles.field import determinism

    return determinism(ctx.engine, ctx.prompts[:n], ctx.forced[:n])


def _batched_prefill(ctx: CheckContext, n: int) -> GoldenResult | None:
    from gemma_oracle.oracles.field import batched_prefill

    if n < 2:
        return None
    result = batched_prefill(ctx.engine, ctx.prompts[:n], ctx.forced[:n], cache=ctx.memo, **_judged(ctx))
    return None if result.skipped else result


# name -> test(ctx, n): a GoldenResult, or None where the test does not apply at this N (needle alone, ...)
TESTS: dict[str, Callable[[CheckContext, int], GoldenResult | None]] = {
    "sweep": _sweep, "needle": _needle, "composition": _composition, "decode-vs-prefill": _decode_vs_prefill,
    "determinism": _determinism, "batched-prefill": _batched_prefill,
}


def _verdict_record(result: GoldenResult, engine_name: str, info: str, fixture: Fixture, test: str, policy) -> VerdictRecord:
    from gemma_oracle.oracles.verdicts import BROKEN, classify

    not_batched = len(result.not_batched)
    v = classify(result, policy=policy if test != "determinism" else None, not_batched=not_batched)
    return VerdictRecord(engine=engine_name, engine_info=info, fixture=fixture.label, test=test, n=result.n,
                         verdict=v.klass, policy=result.policy, thresholds=v.thresholds, reason=v.reason,
                         rows=len(result.comparisons), failed=len(result.failures), not_batched=not_batched,
                         passed=v.klass != BROKEN and not not_batched, batched_rows=batched_rows(result))


def batched_rows(result: GoldenResult) -> int:
    """Compared rows that a batched call produced: a field test numbers its batched calls (None for a row made alone);
    in the sweep, the decode steps (step >= 1) of N >= 2 sequences (step 0 is each prompt prefilled alone)."""
    if result.calls:
        return sum(c is not None for c in result.calls)
    return sum(1 for _, step, _ in result.keys if step >= 1) if result.n >= 2 else 0


@dataclass
class CheckOutcome:
    oracle: list[OracleRecord]
    verdicts: list[VerdictRecord]
    notes: dict[str, str]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


def run_check(plan: CheckPlan, *, progress=None) -> CheckOutcome:
    """Every engine x fixture x test x N of the plan; ``progress(text)`` is told each case as it starts."""
    from gemma_oracle.engine.factory import make_engine as make_ours

    tests = plan.tests or tuple(TESTS)
    oracle: list[OracleRecord] = []
    verdicts: list[VerdictRecord] = []
    notes: dict[str, str] = {}
    for fixture_name in plan.fixtures:
        fixture = resolve_fixture(fixture_name)
        reference_built: list = []

        def reference(_path=fixture.path, _built=reference_built):
            if not _built:
                _built.append(make_ours("numpy64", _path, memo_prefill=True))
            return _built[0]

        for spec in plan.engines:
            t0 = time.monotonic()
            engine = registry.make_engine(spec, fixture.path, slots=max(plan.n_list))
            try:
                name = registry.engine_label(spec)
                info = json.dumps(describe_engine(engine), sort_keys=True, default=str)
                prompts, forced = sequences_for(fixture, engine.vocab_size, plan.steps, max(plan.n_list), plan.seed)
                ctx = CheckContext(engine, fixture, policy_for_engine(engine, fixture.variant), reference, prompts, forced,
                                   plan.seed, plan.n_list)
                if routes_in_auto_mode(engine):
                    ctx.single = _built_once(lambda _p=fixture.path: single_user_twin(_p))
                for test in tests:
                    for n in plan.n_list:
                        if progress is not None:
                            progress(f"{name} {fixture.label} {test} N={n}")
                        result = TESTS[test](ctx, n)
                        if result is None:
                            continue
                        oracle += oracle_records(result, test_id=f"check::{name}::{fixture.label}::{test}-n{n}",
                                                 suite="check", fixture=fixture.label, backend=name,
                                                 route=str(describe_engine(engine).get("route_mode", "none")),
                                                 engine_info=info, test=test)
                        verdicts.append(_verdict_record(result, name, info, fixture, test, ctx.policy))
            finally:
                close = getattr(engine, "close", None)
                if callable(close):
                    close()
            notes[f"time: {spec} on {fixture.label}"] = f"{time.monotonic() - t0:.0f} s"
    return CheckOutcome(oracle, verdicts, notes)


def write_check_run(plan: CheckPlan, outcome: CheckOutcome, root: Path, started, duration_s: float) -> Path:
    """The check as a run directory like the nightly's (oracle + verdicts tables, meta.json last)."""
    run_dir = create_run_dir(root, f"{started:%Y-%m-%d-%H%M%S}-check")
    try:
        writer = RunWriter(run_dir)
        writer.write_table("oracle", outcome.oracle)
        writer.write_table("verdicts", outcome.verdicts)
        notes = dict(outcome.notes)
        notes["engines"] = ", ".join(plan.engines)
        notes["fixtures"] = ", ".join(plan.fixtures)
        notes["batch sizes"] = ", ".join(map(str, plan.n_list))
        writer.write_meta(collect_meta(run_dir.name, "check", ", ".join(registry.engine_label(s) for s in plan.engines),
                                       created=started, duration_s=duration_s, notes=notes))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def verdict_lines(verdicts: Sequence[VerdictRecord]) -> list[str]:
    """The verdict table for a terminal: engine, fixture, test, then one column per N."""
    import dataclasses

    import pandas as pd

    from gemma_oracle.reports.render import markdown_table
    from gemma_oracle.reports.tables import verdict_matrix

    if not verdicts:
        return ["(no cases ran)"]
    wide = verdict_matrix(pd.DataFrame([dataclasses.asdict(v) for v in verdicts]))
    return markdown_table(wide, pad=True).splitlines()
