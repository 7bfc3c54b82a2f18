"""Acceptance: llama.cpp through the oracle (`gemma-oracle check`), in-process (`llamacpp`) and over HTTP against a
REAL llama.cpp server (`openai:url=...`, tests/llama_server.py, metrics on), on the synthetic keqv-window24 f32 and
q4_k_m fixtures and on the real Gemma 3 270M, at N = 1, 2, 4, 5, 8, tests sweep, needle, composition and
batched-prefill.

What is asserted is the machinery, not llama.cpp's numbers:

* every batched call was one real batch: no verdict counts a not-batched step, every BatchRecord the oracle read
  has forward_calls within its minimum, and every llama.cpp ``prefill_batch`` was one request whose slot placement
  was forced (never the pinned fallback, on these inputs);
* each verdict class agrees with the rows stored for its case (row and failure counts; a pass is bitwise or
  close; under a two-sided policy ``bitwise`` exactly when every row has max_abs 0);
* our float64 engine is never ``broken`` and the control ``broken-rope`` is broken at every N >= 2 of sweep,
  needle and composition, in the same runs.

llama.cpp's own classes are printed (run with ``-s``) for the README, not asserted.
"""
from __future__ import annotations

import dataclasses

import pytest

from gemma_oracle.engine import registry
from gemma_oracle.engine.adapters import llamacpp
from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.harness.suites.check import CheckPlan, run_check, verdict_lines
from gemma_oracle.oracles.compare import NAMED_POLICIES, CalibratedPolicy
from gemma_oracle.oracles.verdicts import BITWISE, BROKEN, CLASSES, CLOSE

from .llama_server import llama_server

pytestmark = [  # the synthetic tests are marked `synthetic` one by one; the 270M one is `real`
    pytest.mark.parity,
    pytest.mark.skipif(not llamacpp.available(), reason=f"needs llama.cpp on the CPU: {llamacpp.INSTALL_HINT}"),
]

N_LIST = (1, 2, 4, 5, 8)
TESTS = ("sweep", "needle", "composition", "batched-prefill")
# On the real 270M (262k vocabulary: each float64 reference step costs ~0.2 s on 2 cores) the field tests the
# acceptance names, T = 2: the batched prefill is covered on the synthetic files.
REAL_TESTS = ("sweep", "needle", "composition")
LLAMA = ("llamacpp", "openai")   # the engine names of the two llama.cpp paths, as check records them


@dataclasses.dataclass
class Run:
    label: str
    outcome: object
    batches: dict   # engine spec -> every BatchRecord the oracle read from it (None: the engine has no probe)
    tests: tuple = TESTS


def _recording_make_engine(batches: dict):
    """registry.make_engine, with each engine's last_batch() recorded as the oracle reads it."""
    make = registry.make_engine

    def wrapped(spec, path, **defaults):
        engine = make(spec, path, **defaults)
        probe = getattr(engine, "last_batch", None)
        if callable(probe):
            seen = batches.setdefault(str(spec), [])

            def last_batch():
                record = probe()
                seen.append(record)
                return record
            engine.last_batch = last_batch
        return engine
    return wrapped


def _check(label: str, fixture: str, engines: tuple[str, ...], steps: int, tests=TESTS) -> Run:
    batches: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "make_engine", _recording_make_engine(batches))
        outcome = run_check(CheckPlan(engines=engines, fixtures=(fixture,), n_list=N_LIST, tests=tests, steps=steps))
    return Run(label, outcome, batches, tests)


@pytest.fixture(scope="module")
def synthetic_runs():
    """One run per synthetic fixture: llama.cpp in-process and over HTTP (dense rows: the vocabulary is small),
    our float64 engine and the control, sharing the float64 reference and one server per file."""
    runs = []
    for variant in ("f32", "q4_k_m"):
        path = fixture_path("keqv-window24", variant)
        with llama_server(path, slots=max(N_LIST)) as url:
            runs.append(_check(variant, f"keqv-window24/{variant}",
                               ("llamacpp", f"openai:url={url},topk=0", "numpy", "broken-rope"), steps=2))
    return runs


@pytest.fixture(scope="module")
def real_run():
    """The real Gemma 3 270M through both llama.cpp paths, top-64 log-probabilities, T = 2."""
    from gemma_oracle.harness.real.models import absent_reason, resolve

    reason = absent_reason("gemma3-270m")
    if reason:
        pytest.skip(reason)
    with llama_server(resolve("gemma3-270m").path, slots=max(N_LIST)) as url:
        return _check("270m", "gemma3-270m", ("llamacpp:topk=64", f"openai:url={url},topk=64"), steps=2,
                      tests=REAL_TESTS)


def _assert_machinery(run: Run) -> None:
    verdicts, oracle = run.outcome.verdicts, run.outcome.oracle
    expected = {(e, t, n) for e in {v.engine for v in verdicts} for t in run.tests for n in N_LIST
                if n >= 2 or t == "sweep"}
    assert {(v.engine, v.test, v.n) for v in verdicts} == expected, run.label
    # one real batch, every time
    assert all(v.not_batched == 0 for v in verdicts), [v for v in verdicts if v.not_batched]
    for spec, records in run.batches.items():
        if registry.parse_engine_spec(spec).name in LLAMA:
            assert records and all(r is not None for r in records), f"{spec}: llama.cpp's batch probe gave nothing"
        batched = [r for r in records if r is not None and r.rows >= 2]
        assert all(r.batched for r in batched), [r for r in batched if not r.batched]
        prefills = [r for r in batched if "forced by keys" in r.detail or "fallback" in r.detail]
        if registry.parse_engine_spec(spec).name in LLAMA and "batched-prefill" in run.tests:
            assert prefills and not [r for r in prefills if "fallback" in r.detail], (spec, prefills)
    # each verdict agrees with its stored rows
    rows: dict = {}
    for r in oracle:
        rows.setdefault(r.test_id, []).append(r)
    for v in verdicts:
        case = rows[f"check::{v.engine}::{v.fixture}::{v.test}-n{v.n}"]
        assert v.verdict in CLASSES and v.rows == len(case) > 0, v
        assert v.failed == sum(not r.passed for r in case), v
        assert (v.verdict in (BITWISE, CLOSE)) == (v.failed == 0) == v.passed, v
        if not isinstance(NAMED_POLICIES.get(v.policy), CalibratedPolicy):   # two-sided: rows are vs single-user
            assert (v.verdict == BITWISE) == all(r.max_abs == 0 for r in case), v


def _llama_table(run: Run) -> list[str]:
    return verdict_lines([v for v in run.outcome.verdicts if v.engine.partition(':')[0] in LLAMA])


@pytest.mark.synthetic
def test_llama_cpp_synthetic_runs_are_batched_and_consistent(synthetic_runs):
    for run in synthetic_runs:
        _assert_machinery(run)
        print(f"\nllama.cpp on keqv-window24/{run.label}:", *_llama_table(run), sep="\n")


@pytest.mark.synthetic
def test_the_control_is_broken_and_our_engine_is_not_in_the_same_runs(synthetic_runs):
    for run in synthetic_runs:
        verdicts = run.outcome.verdicts
        assert not [v for v in verdicts if v.engine == "numpy" and v.verdict == BROKEN]
        control = [v for v in verdicts if v.engine == "broken-rope" and v.n >= 2
                   and v.test in ("sweep", "needle", "composition")]
        assert len(control) == 3 * 4 and all(v.verdict == BROKEN and not v.passed for v in control), control


@pytest.mark.real
def test_llama_cpp_on_gemma3_270m_is_batched_and_consistent(real_run):
    _assert_machinery(real_run)
    print("\nllama.cpp on gemma3-270m (top-64):", *_llama_table(real_run), sep="\n")


@pytest.mark.synthetic
def test_in_process_and_http_agree_on_the_synthetic_fixtures(synthetic_runs):
    """The same llama.cpp, the same rows: the two paths must get the same classes (the HTTP path adds transport,
    nothing numeric)."""
    for run in synthetic_runs:
        by = {(v.test, v.n): {} for v in run.outcome.verdicts}
        for v in run.outcome.verdicts:
            by[(v.test, v.n)][v.engine.partition(":")[0]] = v.verdict
        assert all(c["llamacpp"] == c["openai"] for c in by.values()), (run.label, by)

