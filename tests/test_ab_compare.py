"""harness.perf.ab_compare on a real A/B call (H200, twelfth session: the int-bias epilogue against its baseline).

The expected figures are read off the raw files by hand (mode-bench JSON rows, route-tuning parquet rows), not
produced by the code under test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gemma_oracle.harness.perf import ab_compare

pytest.importorskip("pyarrow")
AB = Path(__file__).resolve().parents[1] / "reports" / "history" / "2026-12-06-h200-ab-isum-bias-s12"


def test_whole_step_and_per_matmul_ratios():
    text = ab_compare.compare(AB / "base", AB / "new")
    # mode-bench-shape12b.json, batch-invariant N = 32: 1805.1 t/s (base) and 1768.0 (new)
    assert "| batch-invariant | 32 | 1805.1 | 1768.0 | 0.979 |" in text
    # only batch-invariant was run on the base: auto rows are not compared
    assert "| auto |" not in text
    # route-tuning.parquet, Q4_K 15360 x 3840 N = 16 bm64_bn8: 53.35 us (base) and 57.50 (new): 1.078
    assert "Q4_K 15360 x 3840 N = 16 decode_mmq bm64_bn8 (4 slices): 53.3 -> 57.5 us (1.078)" in text
    # the q4_0 stand-in has no tuning in the base directory: its section holds the whole step only
    q4 = text.split("## shape12b-q4_0")[1]
    assert "per matmul" not in q4 and "| batch-invariant | 1 | 205.3 | 210.2 | 1.024 |" in q4


def test_a_key_timed_twice_counts_once():
    import pandas as pd

    base = pd.read_parquet(AB / "base" / "tune-shape12b" / "route-tuning.parquet")
    new = pd.read_parquet(AB / "new" / "tune-shape12b" / "route-tuning.parquet")
    ratios = ab_compare.tuning_ratios(base, new)
    assert not ratios.duplicated(ab_compare.KEY).any()
    q8 = ratios[(ratios.route == "q8_1") & (ratios.n == 32)]
    # the activation quantization is timed once per matrix shape that reads it (both files: 7 shapes of K = 3840,
    # 2 of 15360, one each of 8192 and 4096 at N = 32): one row per K remains
    assert sorted(q8.cols) == [3840, 4096, 8192, 15360]


def test_machines_that_differ_are_refused(tmp_path):
    for side in ("base", "new"):
        shutil.copytree(AB / side, tmp_path / side)
    path = tmp_path / "new" / "mode-bench-shape12b.json"
    doc = json.loads(path.read_text())
    doc["device"] = "NVIDIA H100 80GB HBM3"
    path.write_text(json.dumps(doc))
    with pytest.raises(ab_compare.AbCompareError, match="not comparable"):
        ab_compare.compare(tmp_path / "base", tmp_path / "new")
    assert ab_compare.main([str(tmp_path / "base"), str(tmp_path / "new")]) == 2


def test_bad_input_names_the_file(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(ab_compare.AbCompareError, match="not a directory"):
        ab_compare.compare(tmp_path / "base", tmp_path / "missing")
    (tmp_path / "new").mkdir()
    with pytest.raises(ab_compare.AbCompareError, match="no model"):
        ab_compare.compare(tmp_path / "base", tmp_path / "new")
    (tmp_path / "base" / "mode-bench-m.json").write_text("{}")
    (tmp_path / "new" / "mode-bench-m.json").write_text("{}")
    with pytest.raises(ab_compare.AbCompareError, match=r"mode-bench-m\.json: expected mode_bench JSON"):
        ab_compare.compare(tmp_path / "base", tmp_path / "new")
