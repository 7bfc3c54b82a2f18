"""The bench and the nightly on the GPU: CUDA-graph timing per route mode, bytes per step from the file,
the route table, the per-op profile through the engine's op_spans hook (which must not change a bit), and a
small nightly with both route modes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from gemma_oracle.harness.perf.bench import BenchConfig, run_bench
from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.harness.nightly import NightlyPlan, run_nightly

pytestmark = pytest.mark.gpu

PRESET, VARIANT = "g4-12b-mini", "q4_k_m"  # 6 layers; gate/up and the global q have 2048 rows: decode-MMQ at N >= 5


@pytest.fixture(scope="module")
def bench():
    cfg = BenchConfig(models=(PRESET,), variant=VARIANT, n_list=(1, 5), route_modes=("batch-invariant", "auto"),
                      context=128, prompt_lens=(16, 24), warmup=2, steps=4, repeats=3, profile_passes=2)
    return run_bench(cfg, "cupy", progress=False)


def test_gpu_bench_rows(bench):
    import cupy as cp

    from gemma_oracle.engine.model_file import load_model

    assert [(r.route, r.n) for r in bench.rows] == [("batch-invariant", 1), ("batch-invariant", 5), ("auto", 1),
                                                    ("auto", 5)]
    assert {(r.backend, r.timing, r.gpu_index) for r in bench.rows} == {("cupy", "cuda-graph", cp.cuda.Device().id)}
    # every matrix as stored in the file (tied output: token_embd is the lm_head; no PLE in this preset)
    mf = load_model(fixture_path(PRESET, VARIANT))
    expected = sum(t.nbytes for t in mf.tensors.values() if len(t.ne) == 2)
    assert {r.weight_bytes for r in bench.rows} == {expected}
    by = {(r.route, r.n): r for r in bench.rows}
    assert by["auto", 5].kv_bytes == by["batch-invariant", 5].kv_bytes > by["auto", 1].kv_bytes > 0
    # engine/routing.py: both modes put every Q4_K / Q6_K matrix (all of this preset's) on packed MMA at every N, so
    # N = 1 and N = 5 use the same kernels; no matmul is left on decode-MMQ
    taken = {key: dict(p.split(":") for p in row.routes.split()) for key, row in by.items()}
    for mode in ("auto", "batch-invariant"):
        assert by[mode, 1].routes == by[mode, 5].routes and int(taken[mode, 5].get("packed_mma", 0)) > 0
        assert "decode_mmq" not in taken[mode, 5], taken[mode, 5]
    for r in bench.rows:
        assert r.tokens_per_s > 0 and r.read_gb_s > 100 and 0 < r.roofline_pct
        assert r.step_ms_min <= r.step_ms <= r.step_ms_max


def test_gpu_route_table_rows(bench):
    kernels = {(r.route, r.n, r.tensor): r.kernel for r in bench.routes}
    # g4-12b-mini: ffn_gate 2048 x 256, attn_k 512 x 256, ffn_down 256 x 2048 (Q4_K / Q6_K, 64-column multiples):
    # packed MMA at every N in both modes (engine/routing.py)
    for tensor in ("blk.0.ffn_gate.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight"):
        assert {kernels[mode, n, tensor] for mode in ("auto", "batch-invariant") for n in (1, 5)} == {"packed_mma"}


def test_gpu_op_profile(bench):
    prof = {p.op: p for p in bench.op_profile if p.route == "auto" and p.n == 5}
    assert {"attn_q", "ffn_gate", "ffn_up", "ffn_down", "attn_output", "lm_head", "attention", "other"} <= set(prof)
    assert prof["attn_q"].calls == 6 and prof["attention"].calls == 6 and prof["lm_head"].calls == 1
    assert sum(p.share_pct for p in prof.values()) == pytest.approx(100.0, abs=1e-6)
    assert {p.timing for p in bench.op_profile} == {"cuda-events-eager"}


def test_op_spans_hook_changes_no_bit():
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.perf.op_profile import CudaSpans
    from gemma_oracle.harness.suites.synthetic import sequences

    engine = make_engine("cupy", fixture_path(PRESET, VARIANT), use_graphs=False, route_mode="auto")
    prompts, _ = sequences(engine.vocab_size)
    seqs = [engine.new_sequence() for _ in range(5)]
    for s, p in zip(seqs, prompts):
        engine.prefill(s, p)
    args = ([7, 8, 9, 10, 11], [s.length for s in seqs], [s.slot for s in seqs], list(range(5)))
    plain = engine.cp.asnumpy(engine.forward(*args))
    spans = CudaSpans()
    engine.op_spans = spans
    timed = engine.cp.asnumpy(engine.forward(*args))
    engine.op_spans = None
    assert np.array_equal(plain, timed)
    seconds = spans.seconds()
    assert seconds["attention"][0] == 6 and seconds["ffn_gate"][0] == 6


def test_gpu_nightly_small_plan(tmp_path):
    plan = NightlyPlan("cupy", synthetic_n=(1, 5), route_modes=("batch-invariant", "auto"), presets=(PRESET,),
                       variants=(VARIANT,), real_suites=(),
                       bench=BenchConfig(models=(PRESET,), n_list=(1, 5), route_modes=("batch-invariant", "auto"),
                                         context=64, warmup=1, steps=2, repeats=2, profile_passes=1))
    out = run_nightly(plan, tmp_path, progress=False)
    assert out.exit_code == 0, [f.message for f in out.findings]
    run = out.run
    assert run.meta.device_kind == "gpu" and run.meta.driver
    oracle = run["oracle"]
    synthetic = oracle[oracle["suite"] == "synthetic"]
    policies = synthetic.groupby("route")["policy"].first().to_dict()
    assert policies == {"auto": "calibrated", "batch-invariant": "exact"}
    assert synthetic.loc[synthetic["route"] == "auto", "routes_taken"].str.contains("packed_mma").any()
    # the engines part: our float64 engine and both GPU modes through `gemma-oracle check`, as separate rows
    checked = set(oracle.loc[oracle["suite"] == "check", "backend"])
    assert {"numpy", "cupy:mode=batch-invariant", "cupy:mode=auto"} <= checked, checked
    assert set(oracle["suite"]) <= {"synthetic", "check"}
    md = (out.run_dir / "report.md").read_text()
    assert "| g4-12b-mini-q4_k_m | 5 | auto | batch-invariant |" in md  # the MMQ / WS table


def test_step_split_records_leaves_out_and_times_the_matmuls():
    """harness.perf.step_split: the recorded matmul calls replay to their own bits; with them left out no matmul
    runs (the lm head's stand-in zeros come out as the logits); each other kind left out changes the logits and
    gives them back when restored; the timings are positive, the per-shape launches add up to the step's, and the
    sweep times every packed shape."""
    import cupy as cp

    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.perf import step_split
    from gemma_oracle.harness.suites.synthetic import sequences

    engine = make_engine("cupy", fixture_path(PRESET, VARIANT), route_mode="auto", kv_dtype="float16")
    prompts, _ = sequences(engine.vocab_size)
    seqs = [engine.new_sequence() for _ in range(5)]
    for s, p in zip(seqs, prompts):
        engine.prefill(s, p)
    static = (cp.full(5, 5, dtype=cp.int32), cp.asarray([s.length for s in seqs], dtype=cp.int32),
              cp.asarray([s.slot for s in seqs], dtype=cp.int32))
    engine._decoding = True
    logits = cp.asnumpy(engine.forward(None, None, None, None, static=static))
    calls = step_split.record_matmuls(lambda: engine.forward(None, None, None, None, static=static))
    # q/k/v (grouped or not), o, gate/up, down in each of 6 layers, then the lm head
    assert 6 * 4 + 1 <= len(calls) <= 6 * 6 + 1
    for c in calls:
        again = c.launcher(*c.args, **c.kwargs)
        pairs = zip(again, c.outputs) if isinstance(again, list) else [(again, c.outputs)]
        assert all(np.array_equal(cp.asnumpy(a), cp.asnumpy(b)) for a, b in pairs), c.key
    with step_split.without_matmuls(calls):
        left_out = cp.asnumpy(engine.forward(None, None, None, None, static=static))
    assert not np.any(left_out) and np.any(logits)
    # each other kind left out in turn changes the logits, and putting it back gives the step's bits again
    norms, engine.norms = engine.norms, step_split._Delegate(engine.norms)
    for kind in step_split.OP_KINDS:
        with step_split.without_ops(kind, lambda: engine.forward(None, None, None, None, static=static), engine):
            other = cp.asnumpy(engine.forward(None, None, None, None, static=static))
        assert not np.array_equal(other, logits), kind
        assert np.array_equal(cp.asnumpy(engine.forward(None, None, None, None, static=static)), logits), kind
    engine.norms = norms
    engine._decoding = False
    split = step_split.split_step(engine, seqs, reps=2, repeats=3, sweep=True)
    assert split.step_ms > 0 and split.rest_ms > 0 and split.matmul_ms > 0 and split.n == 5
    packed = {c.key for c in calls if c.key.startswith("packed ")}
    assert {r["shape"] for r in split.sweeps} == packed and all(r["ms"] > 0 for r in split.sweeps)
    assert sum(r["launches"] for r in split.shapes) == split.matmul_launches == len(calls)
    assert sum(r["weight_bytes"] for r in split.shapes) == split.weight_bytes > 0
    assert set(split.without) == set(step_split.OP_KINDS) and all(ms > 0 for ms in split.without.values())
    summary = step_split.summarize([split])
    assert "| matmul shape |" in summary and "- without attention:" in summary


def test_step_variants_time_each_setting_and_leave_the_engine_as_it_was(monkeypatch):
    """harness.perf.step_variants: every variant timed in every round; the L2 ahead variant's steps launch the
    ahead kernel and the base's do not; afterwards the engine reads the process's own setting again."""
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.perf.step_variants import parse_variant, time_variants
    from gemma_oracle.harness.suites.synthetic import sequences
    from gemma_oracle.kernels import l2_ahead

    monkeypatch.delenv(l2_ahead.ENV, raising=False)
    engine = make_engine("cupy", fixture_path(PRESET, VARIANT), route_mode="auto", kv_dtype="float16")
    prompts, _ = sequences(engine.vocab_size)
    seqs = [engine.new_sequence() for _ in range(3)]
    for s, p in zip(seqs, prompts):
        engine.prefill(s, p)
    launched = []
    original = l2_ahead.l2_ahead
    monkeypatch.setattr(l2_ahead, "l2_ahead", lambda a, n: (launched.append(os.environ.get(l2_ahead.ENV)),
                                                             original(a, n)))
    variants = [parse_variant("base:"), parse_variant(f"ahead:{l2_ahead.ENV}=8"),
                parse_variant("fused:GEMMA_ORACLE_ATTN_FUSED=1")]
    times = time_variants(engine, seqs, variants, rounds=2, reps=2, repeats=2)
    assert set(times) == {"base", "ahead", "fused"} and all(len(t) == 2 and min(t) > 0 for t in times.values())
    assert launched and set(launched) == {"8"}, "the ahead kernel ran outside its variant, or not at all"
    assert engine.l2_ahead_bytes == 0 and not engine._decoding
