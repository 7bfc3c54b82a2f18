"""The BatchDecodeMatMul routing table: seed rules, modes, disabled routes, explanations."""
from __future__ import annotations

import pytest

from gemma_oracle.engine import routing
from gemma_oracle.engine.routing import DECODE_MMQ, GEMM_N, PACKED_MMA, WS, Route, explain_route, route_for

# Packed MMA leads both tables for the types it packs; the decode-MMQ and float rules below it (what a type without
# a packed kernel, or GEMMA_ORACLE_DISABLE_ROUTES=packed_mma, gets) are tested with it taken out.
NO_PACKED = frozenset({PACKED_MMA})

# The measured crossovers of ROUTE_TABLE on the 12B shapes (H100, reports/history/2026-11-25-h100-route-tuning-*):
# (type, rows, cols, last N on a float route, first N on decode-MMQ, float route below it)
CROSSOVERS = [
    ("Q4_K", 15360, 3840, None, 1, None),     # ffn gate/up: MMQ from N = 1
    ("Q6_K", 262144, 3840, None, 1, None),    # tied lm-head
    ("Q4_0", 15360, 3840, None, 1, None),
    ("Q4_K", 8192, 3840, None, 1, None),      # global attn_q
    ("Q4_K", 4096, 3840, None, 1, None),      # sliding attn_q
    ("Q4_K", 3840, 4096, None, 1, None),      # attn_output
    ("Q4_0", 3840, 15360, None, 1, None),     # ffn_down
    ("Q6_K", 3840, 15360, None, 1, None),     # more-bits ffn_down
    ("Q4_K", 2048, 3840, None, 1, None),      # attn_k / attn_v
    ("Q6_K", 2048, 3840, None, 1, None),      # more-bits attn_v
    ("Q4_K", 512, 3840, 2, 3, WS),            # global attn_k
]


@pytest.mark.parametrize("type_name, rows, cols, last_float, first_mmq, float_route", CROSSOVERS)
def test_auto_table_switches_at_the_measured_crossovers(type_name, rows, cols, last_float, first_mmq, float_route):
    if last_float is not None:
        for n in range(1, last_float + 1):
            assert route_for(type_name, rows, cols, n, disabled=NO_PACKED) == float_route, n
    for n in (first_mmq, first_mmq + 1, 16, 17, 32, 64):
        if n >= first_mmq:
            assert route_for(type_name, rows, cols, n, disabled=NO_PACKED) == DECODE_MMQ, n


@pytest.mark.parametrize("type_name, rows, cols, n, expected", [
    ("Q5_0", 4096, 3840, 8, GEMM_N), ("Q5_0", 1024, 3840, 8, WS), ("Q5_0", 1024, 3840, 32, GEMM_N),  # no tile
    ("BF16", 768, 256, 4, WS),                                    # per_layer_model_proj stays on the float routes
    ("Q8_0", 15360, 3840 + 32, 8, GEMM_N),                        # cols not a multiple of 256
    ("Q4_K", 2048, 256, 1, DECODE_MMQ),                           # g4-12b-mini gate/up
    ("Q4_K", 1024, 256, 1, DECODE_MMQ), ("Q4_K", 512, 256, 2, WS),  # tall (aspect 4) and not (aspect 2)
    ("Q4_K", 512, 256, 3, DECODE_MMQ), ("Q4_K", 1024, 3840, 1, WS), ("Q4_K", 1024, 3840, 3, DECODE_MMQ),
    ("Q4_K", 256, 2048, 3, WS), ("Q4_K", 256, 2048, 17, GEMM_N),   # < 512 rows: not measured, float routes
])
def test_auto_table_other_shapes(type_name, rows, cols, n, expected):
    assert route_for(type_name, rows, cols, n, disabled=NO_PACKED) == expected


def test_modes_force_or_exclude_routes():
    # batch-invariant: an MMQ-eligible shape (rows >= 2048) takes decode-MMQ at every N, N = 1 included
    for n in (1, 4, 8, 32):
        assert route_for("Q4_K", 4096, 3840, n, mode="batch-invariant", disabled=NO_PACKED) == DECODE_MMQ
    assert route_for("Q4_K", 1024, 3840, 8, mode="batch-invariant", disabled=NO_PACKED) == WS
    assert route_for("Q4_K", 1024, 3840, 32, mode="batch-invariant", disabled=NO_PACKED) == GEMM_N
    assert route_for("Q4_K", 4096, 3840, 8, mode="batch-invariant", disabled=NO_PACKED | {DECODE_MMQ}) == WS
    assert route_for("Q4_K", 4096, 3840, 8, mode=GEMM_N, disabled=NO_PACKED) == GEMM_N
    assert route_for("Q4_K", 4096, 3840, 8, mode=WS, disabled=NO_PACKED) == WS
    assert route_for("Q4_K", 4096, 3840, 32, mode=WS, disabled=NO_PACKED) == GEMM_N  # WS cannot take N=32
    # forced MMQ ignores the speed rules (N floor, rows, column multiple): only a type without a tile falls back
    assert route_for("Q4_K", 4096, 3840, 2, mode=DECODE_MMQ, disabled=NO_PACKED) == DECODE_MMQ
    assert route_for("Q4_K", 512, 3840, 1, mode=DECODE_MMQ, disabled=NO_PACKED) == DECODE_MMQ
    assert route_for("Q5_0", 4096, 3840, 8, mode=DECODE_MMQ, disabled=NO_PACKED) == GEMM_N
    assert route_for("Q4_K", 4096, 3840, 8, disabled=NO_PACKED | {DECODE_MMQ}) == GEMM_N
    assert route_for("Q4_K", 2048, 3840, 8, disabled=NO_PACKED | {DECODE_MMQ}) == WS


def test_type_without_tile_never_takes_mmq():
    for n in (1, 5, 17, 64):
        assert route_for("Q5_0", 262144, 3840, n) != DECODE_MMQ
        assert route_for("F32", 262144, 3840, n, mode="batch-invariant") != DECODE_MMQ


def test_explanation_names_the_rules_that_failed():
    name, why = explain_route("Q4_K", 1024, 3840, 2, disabled=NO_PACKED)
    assert name == WS and "rows=1024 < 2048" in why and "rows/cols=0.27 < 4.0" in why and "N=2 < 3" in why


def test_every_matmul_gets_a_route_in_every_mode():
    for mode in routing.MODES:
        for t in sorted(routing.ALL_TYPES):
            for n in (1, 5, 16, 17, 64):
                assert route_for(t, 4096, 4096, n, mode=mode) in routing.ROUTES


def test_bad_mode_and_env_are_typed_errors(monkeypatch):
    with pytest.raises(ValueError, match="route mode"):
        route_for("Q4_K", 1, 256, 1, mode="fastest")
    monkeypatch.setenv(routing.ENV_MODE, "mmq-please")
    with pytest.raises(ValueError, match=routing.ENV_MODE):
        routing.mode_from_env()
    monkeypatch.setenv(routing.ENV_DISABLE, "ws,bogus")
    with pytest.raises(ValueError, match="bogus"):
        routing.disabled_from_env()
    monkeypatch.setenv(routing.ENV_DISABLE, "ws")
    assert routing.disabled_from_env() == frozenset({WS})


def test_gemm_n_is_last_and_total():
    assert routing.ROUTE_TABLE[-1].name == GEMM_N
    assert routing.ROUTE_TABLE[-1].eligible("Q6_K", 1, 256, 10_000) is None
    assert isinstance(routing.ROUTE_TABLE[0], Route)


@pytest.mark.parametrize("type_name", sorted(routing.ALL_TYPES))
@pytest.mark.parametrize("rows,cols", [(512, 3840), (2048, 256), (4096, 3840), (15360, 3840), (3840, 15360),
                                       (262144, 3840), (4096, 3840 + 32)])
def test_batch_invariant_mode_routes_by_shape_only(type_name, rows, cols):
    """In batch-invariant mode packed MMA or decode-MMQ serves a matrix at every N or at none, and the float routes it
    falls back to (WS up to 16, GEMM-N beyond) share one reduction order, so no output's arithmetic depends on N;
    with packed MMA taken out, decode-MMQ alike."""
    for disabled in (frozenset(), NO_PACKED):
        routes = {n: route_for(type_name, rows, cols, n, mode="batch-invariant", disabled=disabled)
                  for n in (1, 2, 4, 5, 8, 9, 16, 17, 32, 64)}
        tile_at = {n for n, r in routes.items() if r in (DECODE_MMQ, PACKED_MMA)}
        assert tile_at in (set(), set(routes)), routes
        if tile_at:
            assert len(set(routes.values())) == 1, routes
        else:
            assert all(r == (WS if n <= 16 else GEMM_N) for n, r in routes.items()), routes
    if routing.packable(type_name, rows, cols):
        assert set(routes.values()) != {PACKED_MMA}  # the last pass had it taken out


@pytest.mark.parametrize("type_name, rows, cols, last_float, first_mmq, float_route", CROSSOVERS)
def test_pinned_mode_takes_the_routes_of_its_n_at_any_row_count(type_name, rows, cols, last_float, first_mmq,
                                                                 float_route):
    """auto@K: a step of any row count takes the auto routes of K rows (the single-user twin of a K-row batch)."""
    for disabled in (frozenset(), NO_PACKED):
        for k in (1, 2, 3, 5, 16, 32):
            for n in (1, 2):
                assert (route_for(type_name, rows, cols, n, mode=routing.pinned_mode(k), disabled=disabled)
                        == route_for(type_name, rows, cols, k, disabled=disabled))


def test_pinned_mode_spelling():
    assert routing.split_mode("auto@5") == ("auto", 5)
    assert routing.split_mode("batch-invariant") == ("batch-invariant", None)
    assert routing.pinned_mode(12) == "auto@12"
    for bad in ("auto@0", "auto@", "auto@x", "batch-invariant@4", "ws@2", "auto@-1"):
        with pytest.raises(ValueError, match="auto@K"):
            routing.split_mode(bad)
    with pytest.raises(ValueError, match="N >= 1"):
        routing.pinned_mode(0)
    # a pinned mode run on more rows than its route can take fails loudly instead of overrunning the kernel
    with pytest.raises(ValueError, match="cannot take ws"):
        route_for("Q4_K", 512, 3840, 17, mode=routing.pinned_mode(2), disabled=NO_PACKED)
    assert route_for("Q4_K", 512, 3840, 17, mode=routing.pinned_mode(3), disabled=NO_PACKED) == DECODE_MMQ


def test_registry_accepts_a_pinned_cupy_mode():
    from gemma_oracle.engine.registry import EngineSpecError, check_spec

    assert check_spec("cupy:mode=auto@8")[1] == {"mode": "auto@8"}
    with pytest.raises(EngineSpecError, match="auto@K"):
        check_spec("cupy:mode=auto@none")


def test_dq_mma_is_a_forced_mode():
    """dequant-MMA (kernels/dq_mma.py) is offered as a forced route: every type it has a tile for, at any N and shape;
    a type without one falls back to GEMM-N, and it is not in the auto or batch-invariant tables until timed."""
    from gemma_oracle.engine.routing import DQ_MMA, DQ_MMA_TYPES, INVARIANT_TABLE, MODES, ROUTE_TABLE

    assert DQ_MMA in MODES and DQ_MMA_TYPES == {"Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"}
    for n in (1, 9, 32, 64):
        assert route_for("Q4_K", 512, 3840, n, mode=DQ_MMA) == DQ_MMA
        assert route_for("Q6_K", 262144, 3840, n, mode=DQ_MMA) == DQ_MMA
    assert route_for("Q5_0", 4096, 3840, 8, mode=DQ_MMA) == GEMM_N
    assert route_for("F32", 4096, 3840, 8, mode=DQ_MMA) == GEMM_N
    assert all(r.name != DQ_MMA for r in ROUTE_TABLE + INVARIANT_TABLE)


def test_packed_mma_leads_both_tables_for_its_types_only():
    """Both tables (and the packed / packed-invariant names, now the same tables) put packed MMA first: Q4_0 / Q4_K /
    Q6_K matrices of a multiple of 64 columns take it at every N, every other matrix the route the rest of its table
    gives; packed_mma forces it; with it disabled no mode packs and the tables are decode-MMQ's."""
    from gemma_oracle.engine.routing import INVARIANT_TABLE, PACKED_TABLES, ROUTE_TABLE, packable, uses_packed

    for n in (1, 2, 9, 17, 32, 64):
        for mode in ("auto", "batch-invariant", "packed", "packed-invariant", PACKED_MMA):
            assert route_for("Q4_K", 15360, 3840, n, mode=mode) == PACKED_MMA
            assert route_for("Q4_0", 512, 3840, n, mode=mode) == PACKED_MMA
            assert route_for("Q6_K", 262144, 3840, n, mode=mode) == PACKED_MMA
        for mode, base in ((m, PACKED_TABLES[m][0]) for m in PACKED_TABLES):
            assert route_for("Q5_K", 4096, 3840, n, mode=mode) == route_for("Q5_K", 4096, 3840, n, mode=base)
            assert route_for("Q8_0", 4096, 3840, n, mode=mode) == route_for("Q8_0", 4096, 3840, n, mode=base)
        assert route_for("Q4_0", 4096, 288, n, mode="packed") == route_for("Q4_0", 4096, 288, n, mode="auto")
        assert route_for("Q5_K", 4096, 3840, n, mode=PACKED_MMA) == GEMM_N
        assert route_for("Q4_0", 4096, 288, n, mode=PACKED_MMA) == GEMM_N  # no packed rows of 288 values
        assert route_for("Q4_K", 15360, 3840, n, mode="auto", disabled=NO_PACKED) == DECODE_MMQ
    assert packable("Q4_K", 7, 256) and packable("Q6_K", 7, 256) and not packable("Q4_0", 7, 288)
    assert not packable("Q5_K", 7, 256)
    for mode in ("auto", "batch-invariant", "packed", "packed-invariant", PACKED_MMA, "auto@4"):
        assert uses_packed(mode) and not uses_packed(mode, NO_PACKED)
    assert not uses_packed(DECODE_MMQ) and not uses_packed(WS)
    assert ROUTE_TABLE[0].name == INVARIANT_TABLE[0].name == PACKED_MMA


def test_the_packed_modes_are_judged_as_their_base_tables():
    """A mode whose routes vary with N (auto; packed, whose matrices without a packed copy route as auto) is judged by
    the calibrated policy; packed-invariant and the forced packed_mma route by shape alone and are judged bitwise."""
    from gemma_oracle.harness.suites.synthetic import policy_for, policy_for_engine
    from gemma_oracle.oracles.compare import CALIBRATED_POLICY

    class Described:  # what a CupyEngine in a route mode tells the suites
        name = "cupy-float16:some.gguf"

        def __init__(self, mode):
            self.route_mode = mode

        def describe(self):
            return {"engine": "gemma-oracle cupy", "route_mode": self.route_mode}

    for mode, calibrated in (("auto", True), ("packed", True), ("packed-invariant", False),
                             ("batch-invariant", False), ("packed_mma", False), ("auto@4", False)):
        assert routing.routes_vary_with_n(mode) is calibrated
        assert (policy_for(Described(mode), "cupy") is CALIBRATED_POLICY) is calibrated, mode
        assert (policy_for_engine(Described(mode), "q4_k_m") is CALIBRATED_POLICY) is calibrated, mode


def test_disabled_routes_name_their_source_and_the_unknown_route():
    """The engine's disabled_routes argument and GEMMA_ORACLE_DISABLE_ROUTES are checked alike, each naming itself."""
    assert routing.checked_disabled([PACKED_MMA], "disabled_routes") == NO_PACKED
    with pytest.raises(ValueError, match=r"disabled_routes: unknown route\(s\) \['packed'\]"):
        routing.checked_disabled(["packed"], "disabled_routes")
