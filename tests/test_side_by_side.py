"""harness/perf/side_by_side: issue 23's acceptance table, on the eleventh session's recorded H100 run 2 (raw files in
reports/history/2026-12-06-h100-side-by-side-s11-run2) and on small hand-made results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_oracle.harness.perf.side_by_side import SideBySideError, load_model_run, main, parse_batched_bench, table

RUN2 = Path(__file__).resolve().parents[1] / "reports" / "history" / "2026-12-06-h100-side-by-side-s11-run2"

LLAMA_TABLE = """|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |    1 |    256 |    0.052 |  2467.57 |    0.852 |   {t1} |    0.904 |   283.30 |
|   128 |    128 |    2 |    512 |    0.053 |  4808.50 |    0.970 |   {t2} |    1.023 |   500.60 |
"""


def test_parse_batched_bench_reads_s_tg_by_column_name():
    # the values as printed in llamacpp-shape12b-2.txt (S_TG t/s column), copied by hand
    got = parse_batched_bench((RUN2 / "llamacpp-shape12b-2.txt").read_text())
    assert got == {1: 149.97, 2: 262.24, 4: 404.41, 8: 566.33, 16: 1267.92, 32: 2029.66}


def test_parse_batched_bench_errors_name_the_source():
    with pytest.raises(SideBySideError, match="run-1.txt: no llama-batched-bench table"):
        parse_batched_bench("llama.cpp build not ready or failed:\n", "run-1.txt")
    bad = LLAMA_TABLE.format(t1="150.0", t2="n/a")
    with pytest.raises(SideBySideError, match="run-2.txt: expected an integer B and a number S_TG"):
        parse_batched_bench(bad, "run-2.txt")


def test_recorded_run_models_and_llama_runs_do_not_mix():
    run = load_model_run(RUN2, "shape12b")
    # shape12b's first llama.cpp run printed nothing (cut while waiting for the build): one run, not q4_0's two
    assert len(run.llama_runs) == 1 and run.llama_missing == ["llamacpp-shape12b-1.txt: empty"]
    assert run.llama_runs[0][32] == 2029.66
    q4 = load_model_run(RUN2, "shape12b-q4_0")
    assert [r[1] for r in q4.llama_runs] == [168.84, 168.24] and not q4.llama_missing
    assert round(run.read_gb_s) == 3036 and run.modes["auto"][32] == pytest.approx(1240.8, abs=0.05)


def test_recorded_run_fails_the_target_where_it_was_measured_to():
    text, ok = table(load_model_run(RUN2, "shape12b"), 1.3, 0.95)
    assert not ok
    # 1240.8 / 2029.66 = 0.611 and 176.0 / 149.97 = 1.174 (by hand from the recorded files)
    assert "| 32 | 1240.8 | 1746.5 | 2029.7 | 0.61 |" in text and "| 1 | 176.0 | 170.3 | 150.0 | 1.17 |" in text
    assert "at every N: no (N = 1, 2, 4, 8, 16, 32)" in text
    assert "batch-invariant >= 0.95 x auto at every N: yes" in text
    # against llama.cpp's faster run: q4_0 at N = 1, 182.7 / max(168.84, 168.24) = 1.08
    q4_text, _ = table(load_model_run(RUN2, "shape12b-q4_0"), 1.3, 0.95)
    assert "| 1 | 182.7 | 182.7 | 168.8 / 168.2 | 1.08 |" in q4_text


def _results(tmp_path: Path, auto: dict[int, float], inv: dict[int, float], llama: dict[int, float],
             **others: dict[int, float]) -> Path:
    cols = (("auto", auto), ("batch-invariant", inv), *others.items())
    rows = [dict(n=n, mode=mode, tokens_per_s=tps, weight_bytes=7e9, kv_bytes=1e8) for mode, col in cols
            for n, tps in col.items()]
    (tmp_path / "mode-bench-m.json").write_text(json.dumps(dict(device="GPU", read_gb_s=3000.0, rows=rows)))
    (tmp_path / "llamacpp-m-1.txt").write_text(LLAMA_TABLE.format(t1=f"{llama[1]:.2f}", t2=f"{llama[2]:.2f}"))
    return tmp_path


def test_main_passes_only_when_both_criteria_hold(tmp_path, capsys):
    good = _results(tmp_path, {1: 200.0, 2: 400.0}, {1: 195.0, 2: 390.0}, {1: 150.0, 2: 300.0})
    assert main([str(good), "--n", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "at every N: yes" in out and "| 2 | 400.0 | 390.0 | 300.0 | 1.33 | 0.975 |" in out
    # 1.3 x 150 = 195: 194 misses the target at N = 1 only; 370 / 400 = 0.925 < 0.95 at N = 2
    _results(tmp_path, {1: 194.0, 2: 400.0}, {1: 194.0, 2: 370.0}, {1: 150.0, 2: 300.0})
    assert main([str(tmp_path), "--n", "1", "2"]) == 1
    out = capsys.readouterr().out
    assert "llama.cpp (its faster run) at every N: no (N = 1)" in out
    assert "batch-invariant >= 0.95 x auto at every N: no (N = 2)" in out


def test_unusable_input_is_exit_2_naming_the_file(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no mode-bench-<model>.json" in capsys.readouterr().err
    (tmp_path / "mode-bench-m.json").write_text(json.dumps(dict(device="GPU", rows=[])))
    assert main([str(tmp_path)]) == 2
    assert "mode-bench-m.json: expected mode_bench's JSON with 'read_gb_s'" in capsys.readouterr().err
    _results(tmp_path, {1: 200.0, 2: 400.0}, {1: 195.0, 2: 390.0}, {1: 150.0, 2: 300.0})
    (tmp_path / "llamacpp-m-1.txt").write_text("")
    assert main([str(tmp_path)]) == 2
    assert "no llama.cpp table for m (llamacpp-m-*.txt: llamacpp-m-1.txt: empty)" in capsys.readouterr().err


def test_other_modes_are_listed_beside_llama_and_auto_without_changing_the_verdict(tmp_path, capsys):
    _results(tmp_path, {1: 194.0, 2: 400.0}, {1: 194.0, 2: 390.0}, {1: 150.0, 2: 300.0},
             packed={1: 210.0, 2: 480.0})
    assert main([str(tmp_path), "--n", "1", "2"]) == 1  # judged on auto alone: packed's 1.40 at N = 1 does not pass it
    out = capsys.readouterr().out
    # 210 / 150 = 1.40, 210 / 194 = 1.082; 480 / 300 = 1.60, 480 / 400 = 1.200 (by hand)
    assert "| packed | 210.0 (1.40, 1.082) | 480.0 (1.60, 1.200) |" in out
    assert "at every N: no (N = 1)" in out
    _results(tmp_path, {1: 200.0, 2: 400.0}, {1: 195.0, 2: 390.0}, {1: 150.0, 2: 300.0})
    main([str(tmp_path)])
    assert "Other modes" not in capsys.readouterr().out


def test_an_n_not_run_is_a_no_named_as_such(tmp_path, capsys):
    """Both criteria hold at N = 1 and 2, but the required list goes to 32: a bench cut by its time limit (the
    seventeenth session's last call) must not read as a pass, and the table says which N were not run."""
    _results(tmp_path, {1: 200.0, 2: 400.0}, {1: 195.0, 2: 390.0}, {1: 150.0, 2: 300.0})
    data = json.loads((tmp_path / "mode-bench-m.json").read_text())
    (tmp_path / "mode-bench-m.json").write_text(json.dumps({**data, "complete": False}))
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| 2 | 400.0 | 390.0 | 300.0 | 1.33 | 0.975 |" in out
    assert "llama.cpp (its faster run) at every N: no (not run at N = 4, 8, 16, 32)" in out
    assert "batch-invariant >= 0.95 x auto at every N: no (not run at N = 4, 8, 16, 32)" in out
    assert "the mode bench was cut before its last N" in out
    # a miss and a gap are both named
    _results(tmp_path, {1: 194.0, 2: 400.0}, {1: 194.0, 2: 390.0}, {1: 150.0, 2: 300.0})
    assert main([str(tmp_path), "--n", "1", "2", "4"]) == 1
    assert "at every N: no (N = 1; not run at N = 4)" in capsys.readouterr().out
