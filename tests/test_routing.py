"""The BatchDecodeMatMul routing table: seed rules, modes, disabled routes, explanations."""
from __future__ import annotations

import dataclasses

import pytest

from engine import routing
from engine.routing import DECODE_MMQ, GEMM_N, WS, Route, explain_route, route_for

# A table whose decode-MMQ route has a Q4_K tile, to pin the seed's numbers independent of which tiles exist.
WITH_MMQ = tuple(dataclasses.replace(r, types=frozenset({"Q4_K", "Q6_K"})) if r.name == DECODE_MMQ else r
                 for r in routing.ROUTE_TABLE)


@pytest.mark.parametrize("n,rows,cols,expected", [
    (1, 4096, 3840, WS), (4, 4096, 3840, WS),          # below the MMQ floor N >= 5
    (5, 4096, 3840, DECODE_MMQ), (16, 2048, 256, DECODE_MMQ), (32, 15360, 3840, DECODE_MMQ),
    (5, 2047, 3840, WS),                                # rows < 2048
    (8, 4096, 3840 + 32, WS),                           # cols not a multiple of 256
    (17, 2047, 3840, GEMM_N), (32, 512, 3840, GEMM_N),  # beyond WS capacity 16 and not MMQ-eligible
])
def test_seed_rules(n, rows, cols, expected):
    assert route_for("Q4_K", rows, cols, n, table=WITH_MMQ) == expected


def test_type_without_tile_never_takes_mmq():
    assert route_for("Q5_0", 4096, 3840, 8, table=WITH_MMQ) == WS
    assert route_for("Q5_0", 4096, 3840, 32, table=WITH_MMQ) == GEMM_N


def test_modes_force_or_exclude_routes():
    assert route_for("Q4_K", 4096, 3840, 8, table=WITH_MMQ, mode="batch-invariant") == WS
    assert route_for("Q4_K", 4096, 3840, 32, table=WITH_MMQ, mode="batch-invariant") == GEMM_N
    assert route_for("Q4_K", 4096, 3840, 8, table=WITH_MMQ, mode=GEMM_N) == GEMM_N
    assert route_for("Q4_K", 4096, 3840, 8, table=WITH_MMQ, mode=WS) == WS
    assert route_for("Q4_K", 4096, 3840, 32, table=WITH_MMQ, mode=WS) == GEMM_N  # WS cannot take N=32
    assert route_for("Q4_K", 4096, 3840, 2, table=WITH_MMQ, mode=DECODE_MMQ) == GEMM_N  # forced, but N < 5
    assert route_for("Q4_K", 4096, 3840, 8, table=WITH_MMQ, disabled=frozenset({DECODE_MMQ})) == WS


def test_explanation_names_the_rules_that_failed():
    name, why = explain_route("Q4_K", 1024, 3840, 8, table=WITH_MMQ)
    assert name == WS and "rows=1024 < 2048" in why and "not decode_mmq" in why


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
