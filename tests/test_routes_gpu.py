"""The BatchDecodeMatMul router on the GPU: the route each matmul was actually served by (CupyEngine.routes_served)
at every switch point and override, and the golden single-user vs batched oracle in every route mode.

* fast mode (auto: packed MMA; and its decode-MMQ rules, packed MMA disabled) and forced decode-MMQ on g4-12b-mini
  Q4_K_M and Q4_0 at every N = 5..32: the route under test serves at least one matmul of every layer, and batched
  decode is no further from the float64 engine than single-user decode is (CALIBRATED_POLICY,
  gemma_oracle.oracles.calibrated);
* batch-invariant mode and every forced route, every preset, N up to 32: batched logits BITWISE equal to
  single-user logits (policy `exact`).
"""
from __future__ import annotations

import json

import pytest

from gemma_oracle.engine import routing
from gemma_oracle.engine.routing import DECODE_MMQ, GEMM_N, PACKED_MMA, WS
from gemma_oracle.harness.suites.synthetic import REFERENCE_BACKEND, engine_for, sequences
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.oracles.calibrated import calibrated_single_vs_batched, noise_ratios
from gemma_oracle.oracles.compare import CALIBRATED_POLICY, exact
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched

pytestmark = pytest.mark.gpu

_ENGINES: dict = {}
_SINGLE_MEMO: dict = {}  # single-user results per (engine name, sequence): shared across N


def engine(preset: str, variant: str, mode: str, disabled: str = ""):
    """A cached engine; disabled="packed_mma": the tables' decode-MMQ and float rules (what a type without a packed
    kernel gets), the routes these tests were written for before packed MMA led both tables."""
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.fixtures.cache import fixture_path

    key = (preset, variant, mode, disabled)
    if key not in _ENGINES:
        _ENGINES[key] = make_engine("cupy", fixture_path(preset, variant), route_mode=mode,
                                    disabled_routes=frozenset(filter(None, [disabled])))
    return _ENGINES[key]


def served_after_one_step(eng, n: int) -> dict[str, str]:
    """Run one decode step of n fresh sequences and return the routes its matmuls were dispatched to."""
    eng.routes_served.pop(n, None)
    seqs = [eng.new_sequence() for _ in range(n)]
    for s in seqs:
        eng.prefill(s, [2, 7])
    eng.decode(seqs, [11] * n)
    return dict(eng.routes_served[n])


SWITCH_NS = (1, 2, 3, 4, 5, 6, 8, 9, 15, 16, 17, 31, 32, 33)


@pytest.mark.parametrize("mode", routing.MODES)
@pytest.mark.parametrize("variant", ["q4_k_m", "q4_0", "f32"])
def test_routes_served_equal_the_table_at_every_switch_point(mode, variant):
    eng = engine("g4-12b-mini", variant, mode)
    for n in SWITCH_NS:
        served = served_after_one_step(eng, n)
        predicted = {name: route for name, _, _, _, route in eng.route_table(n)}
        assert served == predicted, f"{mode} {variant} N={n}: served {served} != table {predicted}"


# Hand-written expectations at the switch points of engine/routing.py's tables on g4-12b-mini. Packed MMA leads
# both tables: every Q4_K / Q6_K matrix (64-column multiples) takes it at every N. With it disabled: ffn_gate 2048 x
# 256: decode-MMQ at every N in both auto and batch-invariant; sliding attn_q 1024 x 256 (rows = 4 cols): decode-MMQ
# at every N in auto; attn_k 512 x 256: WS up to N = 2 and decode-MMQ from N = 3 in auto; ffn_down 256 x 2048 (< 512
# rows): WS / GEMM-N in auto; WS / GEMM-N below 2048 rows in batch-invariant.
NO_PACKED = "packed_mma"


@pytest.mark.parametrize("mode, disabled, tensor, expected", [
    ("auto", "", "blk.0.ffn_gate.weight", {1: PACKED_MMA, 2: PACKED_MMA, 17: PACKED_MMA, 33: PACKED_MMA}),
    ("auto", "", "blk.0.ffn_down.weight", {1: PACKED_MMA, 16: PACKED_MMA, 17: PACKED_MMA}),
    ("batch-invariant", "", "blk.0.attn_q.weight", {1: PACKED_MMA, 16: PACKED_MMA, 17: PACKED_MMA}),
    ("auto", NO_PACKED, "blk.0.ffn_gate.weight", {1: DECODE_MMQ, 2: DECODE_MMQ, 17: DECODE_MMQ, 33: DECODE_MMQ}),
    ("auto", NO_PACKED, "blk.0.attn_q.weight", {1: DECODE_MMQ, 2: DECODE_MMQ, 3: DECODE_MMQ, 16: DECODE_MMQ}),
    ("auto", NO_PACKED, "blk.0.attn_k.weight", {1: WS, 2: WS, 3: DECODE_MMQ, 5: DECODE_MMQ}),
    ("auto", NO_PACKED, "blk.0.ffn_down.weight", {1: WS, 3: WS, 16: WS, 17: GEMM_N, 33: GEMM_N}),
    ("batch-invariant", NO_PACKED, "blk.0.ffn_gate.weight", {1: DECODE_MMQ, 4: DECODE_MMQ, 17: DECODE_MMQ}),
    ("batch-invariant", NO_PACKED, "blk.0.attn_q.weight", {1: WS, 16: WS, 17: GEMM_N}),
    ("decode_mmq", "", "blk.0.attn_q.weight", {1: DECODE_MMQ, 4: DECODE_MMQ, 33: DECODE_MMQ}),
    ("ws", "", "blk.0.ffn_gate.weight", {1: WS, 16: WS, 17: GEMM_N}),
    ("gemm_n", "", "blk.0.ffn_gate.weight", {1: GEMM_N, 16: GEMM_N}),
])
def test_switch_points_by_hand(mode, disabled, tensor, expected):
    eng = engine("g4-12b-mini", "q4_k_m", mode, disabled)
    got = {n: served_after_one_step(eng, n)[tensor] for n in expected}
    assert got == expected


def test_disabling_decode_mmq_takes_it_out(monkeypatch):
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.fixtures.cache import fixture_path

    monkeypatch.setenv(routing.ENV_DISABLE, DECODE_MMQ)
    eng = make_engine("cupy", fixture_path("g4-12b-mini", "q4_k_m"), route_mode="auto")
    for n in (5, 8, 17):
        assert DECODE_MMQ not in set(served_after_one_step(eng, n).values())
    monkeypatch.setenv(routing.ENV_MODE, DECODE_MMQ)
    monkeypatch.delenv(routing.ENV_DISABLE)
    forced = make_engine("cupy", fixture_path("g4-12b-mini", "q4_k_m"))  # the mode from the environment
    assert forced.route_mode == DECODE_MMQ and set(served_after_one_step(forced, 2).values()) == {DECODE_MMQ}


def _route_layers(served: dict[str, str], route: str) -> set[int]:
    return {int(name.split(".")[1]) for name, r in served.items() if r == route and name.startswith("blk.")}


@pytest.mark.parametrize("n", range(5, 33))
@pytest.mark.parametrize("mode, disabled, route", [("auto", "", PACKED_MMA), ("auto", NO_PACKED, DECODE_MMQ),
                                                   (DECODE_MMQ, "", DECODE_MMQ)],
                         ids=["auto", "auto-without-packed", "decode_mmq"])
@pytest.mark.parametrize("variant", ["q4_k_m", "q4_0"])
def test_fast_mode_golden_through_decode_mmq(variant, mode, disabled, route, n, record_property):
    eng = engine("g4-12b-mini", variant, mode, disabled)
    prompts, forced = sequences(eng.vocab_size)
    reference = engine_for("g4-12b-mini", variant, REFERENCE_BACKEND)  # float64 on the same file
    result = calibrated_single_vs_batched(eng, prompts[:n], forced[:n], reference_engine=reference,
                                          policy=CALIBRATED_POLICY, cache=_SINGLE_MEMO)
    layers = _route_layers(eng.routes_served[n], route)
    assert layers == set(range(eng.config.n_layers)), f"{route} served no matmul of layers " \
        f"{sorted(set(range(eng.config.n_layers)) - layers)} at N={n}"
    worst_abs = max(c.max_abs for c in result.comparisons)
    record_property("worst_max_abs", worst_abs)
    record_property("min_top5_overlap", min(c.topk_overlap for c in result.comparisons))
    record_property("argmax_flips", sum(not c.argmax_agree for c in result.comparisons))
    record_property("noise_ratios", json.dumps(noise_ratios(result)))  # batched / single-user error: the factors' measurement
    result.assert_passed()


FORCED_CASES = [(p, v, m) for p in sorted(PRESETS) for v in ("q4_k_m", "q4_0", "q8_0")
                for m in ("batch-invariant", WS, GEMM_N, DECODE_MMQ, routing.DQ_MMA)]


@pytest.mark.parametrize("preset, variant, mode", FORCED_CASES, ids=["-".join(c) for c in FORCED_CASES])
def test_batch_invariant_modes_are_bitwise(preset, variant, mode):
    """Every mode whose routes depend on the shape only gives batched == single-user, bitwise, at every N <= 32."""
    eng = engine(preset, variant, mode)
    prompts, forced = sequences(eng.vocab_size)
    for n in (1, 2, 3, 5, 8, 16, 17, 32):
        golden_single_vs_batched(eng, prompts[:n], forced[:n], policy=exact(), cache=_SINGLE_MEMO).assert_passed()
    if preset == "g4-12b-mini" and mode in ("batch-invariant", DECODE_MMQ):  # the tile really took part
        packed = mode == "batch-invariant" and variant != "q8_0"  # no packed Q8_0: decode-MMQ serves it
        assert (PACKED_MMA if packed else DECODE_MMQ) in set(eng.routes_served[32].values())
    if mode == routing.DQ_MMA:  # the forced dequant-MMA route took part (a quantized matrix on it at N = 32)
        assert routing.DQ_MMA in set(eng.routes_served[32].values())
