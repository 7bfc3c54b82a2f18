"""`gemma-oracle nightly`, the project's main job: the synthetic golden suite, every real suite whose model is
present, and the bench, on the best available backend; stored as one run under reports/nightly/<id>/ with
its report; compared with the previous nightly; non-zero exit on a regression (reports/regress.py).

What runs is a plan per backend (`PLANS`): the numpy plan keeps a fresh 2-core CPU machine under 8
minutes, fixture builds included; the GPU plan adds route modes and the larger batch sizes.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from gemma_oracle.reports.records import NO_ROUTE, OracleRecord, oracle_records
from gemma_oracle.reports.regress import Finding, compare_runs, exit_code
from gemma_oracle.reports.render import write_report
from gemma_oracle.reports.run_meta import collect_meta, utc_now
from gemma_oracle.reports.store import RunWriter, StoredRun, create_run_dir, list_runs, load_run, read_meta

from gemma_oracle.harness.perf.bench import BenchConfig, run_bench
from gemma_oracle.harness.suites.synthetic import (BOUNDARY_N, GPU_BOUNDARY_N, GPU_N_LIST, N_LIST, cases, record_context,
                                                   routes_taken, run_case)
from gemma_oracle.harness.suites.real import REAL_SUITES, RealSuite, run_real_suite

DEFAULT_ROOT = Path("reports") / "nightly"
PARTS = ("synthetic", "real", "engines", "planted", "bench")
# The engines part: every engine this machine can run (gemma_oracle.engine.registry) through `gemma-oracle check`'s
# tests on these fixtures, each as its own rows labelled with its describe(). ~25 s on 2 CPU cores with llama.cpp.
ENGINE_FIXTURES = ("keqv-window24/f32", "keqv-window24/q4_k_m")
ENGINE_N = (1, 2, 4, 5, 8)


@dataclass(frozen=True)
class NightlyPlan:
    backend: str
    synthetic_n: tuple[int, ...]
    route_modes: tuple[str | None, ...]  # None: the engine's default (the numpy engine has no routes)
    bench: BenchConfig
    presets: tuple[str, ...] | None = None  # None: every preset
    variants: tuple[str, ...] | None = None  # None: every quant variant
    real_suites: tuple[RealSuite, ...] = REAL_SUITES
    parts: tuple[str, ...] = PARTS
    synthetic_boundary_n: tuple[int, ...] = BOUNDARY_N  # the input plans' batch sizes (suites/synthetic.py)


PLANS: dict[str, NightlyPlan] = {
    # CPU (2 cores, measured 2026-11-25): fixtures ~15 s, synthetic ~75 s, Gemma 3 270M ~40 s, bench ~10 s.
    # The input plans (suites/inputs.py) added ~110 boundary cases; `pytest -m synthetic -n 2`: 69 s -> 111 s (2026-12-06).
    # the planted-bug part (every plan, on the CPU) ~40 s (2026-12-06, one process).
    "numpy64": NightlyPlan(
        "numpy64", N_LIST, (None,),
        BenchConfig(models=("g4-e2b-mini",), n_list=(1, 2, 4, 8, 16), route_modes=(NO_ROUTE,), context=256,
                    warmup=1, steps=4, repeats=3, profile_passes=1)),
    # GPU: both sides of every route switch, decode-MMQ (auto) beside the batch-invariant default; the bench's 12B
    # is the 12B-shaped stand-in (harness/standin.py, built on first use in about a minute; labelled synthetic).
    "cupy": NightlyPlan(
        "cupy", GPU_N_LIST, ("batch-invariant", "auto"),
        BenchConfig(models=("shape12b", "g4-e4b-mini"), n_list=(1, 2, 4, 8, 16, 32),
                    route_modes=("batch-invariant", "auto"), context=512, warmup=4, steps=16, repeats=5),
        synthetic_boundary_n=GPU_BOUNDARY_N),
}


@dataclass
class NightlyOutcome:
    run_dir: Path
    run: StoredRun
    previous: StoredRun | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)


def _bar(total: int, desc: str, progress: bool | str):
    """A tqdm bar on a terminal, a line every few seconds elsewhere, nothing when progress is False."""
    from gemma_oracle.harness.progress import Progress

    return Progress(total, desc, progress)


def run_synthetic(plan: NightlyPlan, progress: bool) -> list[OracleRecord]:
    todo = cases(plan.presets, plan.variants, plan.synthetic_n, plan.synthetic_boundary_n)
    records: list[OracleRecord] = []
    with _bar(len(todo) * len(plan.route_modes), "synthetic", progress) as bar:
        for mode in plan.route_modes:
            for case in todo:
                bar.set_postfix_str(f"{case.id} {mode or ''}")
                result = run_case(case, plan.backend, mode)
                records += oracle_records(result, test_id=f"nightly::synthetic::{case.id}",
                                          **record_context(case, plan.backend, mode))
                bar.update()
    return records


def run_real(plan: NightlyPlan, progress: bool, notes: dict[str, str]) -> list[OracleRecord]:
    from gemma_oracle.engine.factory import make_engine

    records: list[OracleRecord] = []
    for suite in plan.real_suites:
        reason = suite.missing()
        if reason:
            notes[f"real suite {suite.name} (pytest -m {suite.marker})"] = f"skipped: {reason}"
            continue
        path = suite.locate()
        for mode in plan.route_modes:
            options = {} if mode is None else {"route_mode": mode}
            engine = make_engine(plan.backend, path, memo_prefill=True, **options)
            route = getattr(engine, "route_mode", NO_ROUTE)
            with _bar(len(suite.n_list(plan.backend)), suite.name, progress) as bar:
                for n, result in run_real_suite(suite, engine, plan.backend):
                    records += oracle_records(result, test_id=f"nightly::{suite.name}::{path.stem}-n{n}",
                                              suite=suite.name, fixture=path.stem, backend=plan.backend, route=route,
                                              routes_taken=routes_taken(engine, n))
                    bar.update()
            del engine
        notes[f"real suite {suite.name} (pytest -m {suite.marker})"] = f"ran on {path.name}"
    return records


def available_engines(backend: str) -> tuple[str, ...]:
    """The engine specs the nightly puts through the check on this machine: our float64 reference always; our GPU
    engine in both route modes on a GPU; llama.cpp where the `parity` extra is installed."""
    from gemma_oracle.engine.registry import unavailable_reason

    specs = ["numpy"] + (["cupy:mode=batch-invariant", "cupy:mode=auto"] if backend == "cupy" else []) + ["llamacpp"]
    return tuple(s for s in specs if unavailable_reason(s) is None)


def run_engines(plan: NightlyPlan, progress: bool | str, notes: dict[str, str]):
    """Every available engine through the check (gemma_oracle.harness.suites.check): oracle rows and verdicts."""
    from gemma_oracle.harness.suites.check import CheckPlan, TESTS, run_check

    check = CheckPlan(engines=available_engines(plan.backend), fixtures=ENGINE_FIXTURES, n_list=ENGINE_N)
    total = len(check.engines) * len(check.fixtures) * len(check.n_list) * len(TESTS)
    with _bar(total, "engines", progress) as bar:
        outcome = run_check(check, progress=lambda text: (bar.set_postfix_str(text), bar.update()))
    notes["engines checked"] = ", ".join(check.engines)
    return outcome.oracle, outcome.verdicts


def run_planted(progress: bool | str) -> list:
    """The planted-bug suite (gemma_oracle.harness.suites.planted): every bug x policy x N, on the CPU whatever
    the plan's backend (its engines are the numpy reference with one piece of the batched path broken)."""
    from gemma_oracle.harness.suites import planted

    total = (len(planted.BUGS) + len(planted.FIXTURES)) * len(planted.POLICIES + planted.RECORD_ONLY) * len(planted.N_LIST)
    with _bar(total, "planted", progress) as bar:
        return planted.catch_runs(progress=bar.update)


def previous_run(root: Path, run_dir: Path) -> Path | None:
    """The latest finished run of ``run_dir``'s kind before it under ``root``: on the same backend if there is
    one (correctness keys include the backend, so only that comparison can find a pass turned failure)."""
    meta = read_meta(run_dir)
    runs = list_runs(root)
    earlier = [d for d in (runs[: runs.index(run_dir)] if run_dir in runs else runs) if read_meta(d).kind == meta.kind]
    same = [d for d in earlier if read_meta(d).backend == meta.backend]
    return (same or earlier or [None])[-1]


def report_run(run_dir: Path, previous_dir: Path | None) -> NightlyOutcome:
    """Load a finished run, compare it with ``previous_dir``, and (re)write its report files."""
    run = load_run(run_dir)
    previous = load_run(previous_dir) if previous_dir is not None else None
    findings = compare_runs(run, previous)
    root = run_dir.parent
    history = [load_run(d) for d in list_runs(root)]
    if not any(h.dir == run.dir for h in history):
        history.append(run)
    write_report(run, previous=previous, findings=findings, history=history)
    return NightlyOutcome(run_dir, run, previous, findings)


def run_nightly(plan: NightlyPlan, root: Path = DEFAULT_ROOT, *, progress: bool | str = True) -> NightlyOutcome:
    started = utc_now()
    run_dir = create_run_dir(root, f"{started:%Y-%m-%d-%H%M%S}")
    try:
        _fill_run(plan, run_dir, started, progress)
    except BaseException:  # Ctrl-C or a failure: nothing half-made stays where a later run or report could find it
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return report_run(run_dir, previous_run(root, run_dir))


def _fill_run(plan: NightlyPlan, run_dir: Path, started, progress: bool | str) -> None:
    t0 = time.monotonic()
    writer = RunWriter(run_dir)
    notes: dict[str, str] = {}
    left_out = [part for part in PARTS if part not in plan.parts]
    if left_out:
        notes["parts left out"] = ", ".join(left_out)
    oracle: list[OracleRecord] = []
    if "synthetic" in plan.parts:
        t = time.monotonic()
        oracle += run_synthetic(plan, progress)
        notes["time: synthetic suite"] = f"{time.monotonic() - t:.0f} s"
    if "real" in plan.parts:
        t = time.monotonic()
        oracle += run_real(plan, progress, notes)
        notes["time: real suites"] = f"{time.monotonic() - t:.0f} s"
    if "engines" in plan.parts:
        t = time.monotonic()
        rows, verdicts = run_engines(plan, progress, notes)
        oracle += rows
        writer.write_table("verdicts", verdicts)
        notes["time: engines"] = f"{time.monotonic() - t:.0f} s"
    writer.write_table("oracle", oracle)
    if "planted" in plan.parts:
        t = time.monotonic()
        writer.write_table("planted", run_planted(progress))
        notes["time: planted bugs"] = f"{time.monotonic() - t:.0f} s"
    if "bench" in plan.parts:
        t = time.monotonic()
        bench = run_bench(plan.bench, plan.backend, progress=progress)
        writer.write_table("bench", bench.rows)
        writer.write_table("op_profile", bench.op_profile)
        writer.write_table("routes", bench.routes)
        notes["time: bench"] = f"{time.monotonic() - t:.0f} s"
    # meta.json last: from here on the run is finished and a later nightly may compare with it
    writer.write_meta(collect_meta(run_dir.name, "nightly", plan.backend, created=started,
                                   duration_s=time.monotonic() - t0, notes=notes))
