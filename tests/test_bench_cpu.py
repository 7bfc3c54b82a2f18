"""The bench on the CPU (numpy backend): bytes per step worked out by hand from the preset's dimensions,
the roofline, the per-op profile and the options it refuses."""
from __future__ import annotations

import re

import pytest

from gemma_oracle.harness.perf.bench import BenchConfig, BenchConfigError, run_bench
from gemma_oracle.harness.cli import main
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.harness.perf.roofline import kv_read_bytes, roofline_tokens_per_s
from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab
from gemma_oracle.reports.records import NO_ROUTE
from gemma_oracle.reports.store import list_runs, load_run

pytestmark = pytest.mark.synthetic

# g4-e2b-mini (harness/presets.py): hidden 256, 4 heads, 10 layers, global layers 4 and 9, head dims 64 / 128,
# 1 KV head, layers 5-9 share KV (sliding ones read layer 3, layer 9 reads layer 4), n_ff 512 (0-4) / 1024
# (5-9), PLE width 64, tied output over a 512-token vocabulary. Matrix elements a step multiplies by:
#   attn_q + attn_output: 8 sliding x 2 x 256x256 + 2 global x 2 x 512x256           = 1_572_864
#   attn_k + attn_v (KV-owning layers 0-4): 4 x 2 x 64x256 + 2 x 128x256             =   196_608
#   ffn gate/up/down: 5 x 3 x 512x256 + 5 x 3 x 1024x256                              = 5_898_240
#   inp_gate + proj: 10 x 2 x 64x256                                                  =   327_680
#   per_layer_model_proj 640x256 + lm_head (token_embd) 512x256                       =   294_912
# = 8_290_304 elements, float64 in the numpy engine:
E2B_WEIGHT_BYTES = 8_290_304 * 8
E2B_PLE_PROJ_BYTES, E2B_LM_HEAD_BYTES = 640 * 256 * 8, 512 * 256 * 8


def _e2b_config():
    return PRESETS["g4-e2b-mini"].config(len(small_vocab().tokens))


def test_kv_read_bytes_by_hand():
    # position 20, float64: 8 sliding layers (0-3, and 5-8 reading layer 3) see min(21, window 8) = 8 positions
    # of 1 head x 64 dims, K and V: 8 x 8 x 64 x 2 x 8 = 65_536; global layers 4 and 9 (reading 4) see 21 positions
    # of 1 x 128: 2 x 21 x 128 x 2 x 8 = 86_016
    assert kv_read_bytes(_e2b_config(), 20, 8) == 65_536 + 86_016
    # position 0: every layer sees 1 position: 8 x 64 x 16 + 2 x 128 x 16
    assert kv_read_bytes(_e2b_config(), 0, 8) == 8 * 64 * 16 + 2 * 128 * 16


def test_host_probe_reads_a_buffer_beyond_the_caches():
    from gemma_oracle.harness.perf.devices import HOST_PROBE_BYTES, host_read_bandwidth_gb_s

    assert HOST_PROBE_BYTES >= 1 << 30  # several times any last-level cache the CI hosts have (32 MiB)
    assert host_read_bandwidth_gb_s(8 << 20, repeats=2, threads=2) > 0


def test_bench_log_line_flags_noise_and_a_roofline_breach():
    from gemma_oracle.harness.perf.bench import _row_line

    from .recorded_runs import bench_row

    clean, noisy = bench_row(spread_pct=1.0), bench_row(spread_pct=30.0, tokens_per_s=6600.0)
    assert "noisy" not in _row_line(clean) and "measurement error" not in _row_line(clean)
    line = _row_line(noisy)
    assert "(noisy: repeats spread 30 % > 10 %; measurement error: 165 % of a ceiling" in line


def test_roofline_formula():
    # N = 4 at 10 GB/s over 1 MB of weights + 4 x 0.25 MB of KV: 4 x 1e10 / 2e6
    assert roofline_tokens_per_s(4, 10.0, 1_000_000, 1_000_000) == 20_000.0


@pytest.fixture(scope="module")
def bench():
    cfg = BenchConfig(models=("g4-e2b-mini",), n_list=(1, 3), route_modes=(NO_ROUTE,), context=64, prompt_lens=(5, 9),
                      warmup=1, steps=2, repeats=2, profile_passes=1)
    lines = []
    result = run_bench(cfg, "numpy64", progress=False, log=lines.append)
    result.log_lines = lines
    return result


def test_bench_logs_each_row_as_it_completes(bench):
    assert len(bench.log_lines) == len(bench.rows) == 2
    for line, r in zip(bench.log_lines, bench.rows):
        assert line.startswith(f"bench g4-e2b-mini-q4_k_m {NO_ROUTE} N={r.n}: ")
        assert f"{r.tokens_per_s:.1f} t/s" in line and f"{r.roofline_pct:.1f} %" in line


def test_bench_rows(bench):
    assert [r.n for r in bench.rows] == [1, 3]
    assert {r.model for r in bench.rows} == {"g4-e2b-mini-q4_k_m"}
    assert {(r.backend, r.route, r.timing, r.gpu_index) for r in bench.rows} == {
        ("numpy64", NO_ROUTE, "host-clock", None)}
    assert all(r.weight_bytes == E2B_WEIGHT_BYTES for r in bench.rows)
    # N=1: prompt 5 + 1 warm-up step -> timed positions 6, 7, 8, 9 (2 repeats x 2 steps). Per position, float64:
    # sliding 8 layers x min(p+1, 8) x 64 x 16, global 2 x (p+1) x 128 x 16:
    # p=6: 57_344 + 28_672; p=7: 65_536 + 32_768; p=8: 65_536 + 36_864; p=9: 65_536 + 40_960 -> mean 98_304
    assert bench.rows[0].kv_bytes == 98_304
    assert bench.rows[0].mean_position == 7.5
    # N=3: prompts 5, 9, 5 -> two sequences as above and one at positions 10..13:
    # 65_536 + 2 x 2_048 x (11, 12, 13, 14) -> mean 65_536 + 51_200 = 116_736
    assert bench.rows[1].kv_bytes == 2 * 98_304 + 116_736
    for r in bench.rows:
        assert r.step_ms_min <= r.step_ms <= r.step_ms_max and r.spread_pct >= 0
        assert r.tokens_per_s == pytest.approx(r.n * 1e3 / r.step_ms, rel=1e-12)
        ceiling = r.n * r.read_gb_s * 1e9 / (E2B_WEIGHT_BYTES + r.kv_bytes)
        assert r.roofline_tokens_per_s == pytest.approx(ceiling, rel=1e-6)
        assert r.read_gb_s == bench.read_gb_s > 0
    assert bench.routes == []  # the numpy engine has no routes


def test_op_profile_splits_the_step_by_weight_role(bench):
    prof = {p.op: p for p in bench.op_profile if p.n == 3}
    assert set(prof) == {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "inp_gate",
                         "proj", "per_layer_model_proj", "lm_head", "attention", "norms", "rope", "activations",
                         "other"}
    # one matmul per layer and role; K/V on the 5 KV-owning layers; attention once per layer per row (N=3);
    # RoPE on q in every layer and on k in the owning ones
    expected_calls = {"attn_q": 10, "attn_k": 5, "attn_v": 5, "per_layer_model_proj": 1, "lm_head": 1,
                      "attention": 30, "rope": 15}
    assert {op: prof[op].calls for op in expected_calls} == expected_calls
    assert prof["per_layer_model_proj"].weight_bytes == E2B_PLE_PROJ_BYTES
    assert prof["lm_head"].weight_bytes == E2B_LM_HEAD_BYTES
    assert sum(p.share_pct for p in prof.values()) == pytest.approx(100.0, abs=1e-6)
    assert all(p.ms >= 0 for p in prof.values())


@pytest.mark.parametrize("options,option", [
    (dict(context=8), "--context"),
    (dict(n_list=()), "--n"),
    (dict(n_list=(0, 2)), "--n"),
    (dict(route_modes=("fastest",)), "--route"),
    (dict(steps=0), "--steps"),
    (dict(prompt_lens=(0,)), "--prompt-len"),
])
def test_config_errors_name_the_option(options, option):
    base = dict(models=("g4-e2b-mini",), context=64, prompt_lens=(5,), warmup=1, steps=2, repeats=2)
    with pytest.raises(BenchConfigError, match=option):
        BenchConfig(**{**base, **options})


def test_run_errors_name_the_option(tmp_path):
    with pytest.raises(BenchConfigError, match="--route auto: route modes choose GPU kernels"):
        run_bench(BenchConfig(models=("keqv-mixed",), route_modes=("auto",), steps=1, repeats=1), "numpy64",
                  progress=False)
    with pytest.raises(BenchConfigError, match="--model no-such-model: not a preset"):
        run_bench(BenchConfig(models=("no-such-model",), route_modes=(NO_ROUTE,), steps=1, repeats=1), "numpy64",
                  progress=False)
    # keqv-mixed holds 256 positions
    with pytest.raises(BenchConfigError, match="keqv-mixed-f32 holds 256 positions, the run needs 316"):
        run_bench(BenchConfig(models=("keqv-mixed",), variant="f32", route_modes=(NO_ROUTE,), context=400,
                              prompt_lens=(16,), warmup=0, steps=100, repeats=3), "numpy64", progress=False)


def test_cli_bench_stores_a_run_with_its_report(tmp_path, capsys):
    args = ["bench", "--backend", "numpy", "--model", "keqv-mixed", "--variant", "f32", "--n", "1", "2", "--steps", "1",
            "--repeats", "2", "--warmup", "0", "--context", "32", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    (run_dir,) = list_runs(tmp_path)
    run = load_run(run_dir)
    assert run.meta.kind == "bench" and run.meta.backend == "numpy64" and run.meta.device_kind == "cpu"
    assert run["bench"]["n"].tolist() == [1, 2] and run["oracle"].empty
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()
    assert re.search(r"\| keqv-mixed-f32 +\| none +\| 2 +\|", capsys.readouterr().out)  # padded columns
    assert main(args[:-2] + ["--route", "auto", "--out", str(tmp_path)]) == 2
    assert "route modes choose GPU kernels" in capsys.readouterr().err
