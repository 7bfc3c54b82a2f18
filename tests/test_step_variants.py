"""harness.perf.step_variants on the host: variant specs, the environment each variant runs in, the table (the GPU
run: tests/test_bench_gpu.py)."""
from __future__ import annotations

import os

import pytest

from gemma_oracle.harness.perf.step_variants import Variant, applied, parse_variant, summarize


def test_specs_name_their_environment():
    assert parse_variant("base:") == Variant("base", ())
    assert parse_variant("ahead24:GEMMA_ORACLE_L2_AHEAD=24") == Variant("ahead24", (("GEMMA_ORACLE_L2_AHEAD", "24"),))
    assert parse_variant(" both : A=1 , B=x=y ") == Variant("both", (("A", "1"), ("B", "x=y")))
    for bad in ("noname", ":A=1", "v:A", "v:1A=2", "v:A=1,,=2"):
        with pytest.raises(ValueError, match="variant"):
            parse_variant(bad)


def test_each_variant_runs_with_only_its_own_settings(monkeypatch):
    monkeypatch.setenv("GO_TEST_A", "outer")
    monkeypatch.delenv("GO_TEST_B", raising=False)
    every = [parse_variant("base:"), parse_variant("a:GO_TEST_A=1"), parse_variant("b:GO_TEST_B=2")]
    with applied(every[0], every):
        assert "GO_TEST_A" not in os.environ and "GO_TEST_B" not in os.environ
    with applied(every[2], every):
        assert os.environ["GO_TEST_B"] == "2" and "GO_TEST_A" not in os.environ
    with pytest.raises(RuntimeError):
        with applied(every[1], every):
            assert os.environ["GO_TEST_A"] == "1"
            raise RuntimeError("a failed timing")
    assert os.environ["GO_TEST_A"] == "outer" and "GO_TEST_B" not in os.environ  # restored, also after an error


def test_table_gives_each_variant_against_the_first():
    rows = [dict(model="m", n=2, mode="auto", variant="base", ms=5.0, ratio=1.0, rounds=[5.0, 5.1, 4.9]),
            dict(model="m", n=2, mode="auto", variant="ahead", ms=4.0, ratio=1.25, rounds=[4.0, 4.0, 4.1])]
    text = summarize(rows)
    assert "| m | 2 | auto | ahead | 4.0000 | 500.0 | 1.250 | 4.0000 4.0000 4.1000 |" in text
    assert "| m | 2 | auto | base | 5.0000 | 400.0 | 1.000 |" in text
