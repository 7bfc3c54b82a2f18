"""The GPU tuning tools' host-side parts on recorded H100 runs: which matmul shapes a model has (harness/route_tuning)
and how a mode bench is summarised (harness/mode_bench: best forced route, auto / best, crossover N)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_oracle.harness.perf.mode_bench import summarize
from gemma_oracle.harness.perf.route_tuning import main as route_tuning_main, model_shapes, select_dq_tiles

HISTORY = Path(__file__).resolve().parents[1] / "reports" / "history"


def test_shape12b_matmul_shapes_cover_one_decode_step():
    """329 matmuls a step (perf-anchor.md: 284 Q4_K + 45 Q6_K matrices, the tied lm-head among them), in 11 shapes."""
    shapes = model_shapes("shape12b")
    assert sum(s.count for s in shapes) == 329 and len(shapes) == 11
    by_key = {(s.type_name, s.rows, s.cols): s.count for s in shapes}
    assert by_key[("Q6_K", 262144, 3840)] == 1  # the tied lm-head
    assert by_key[("Q4_K", 15360, 3840)] == 96  # ffn_gate + ffn_up
    assert by_key[("Q4_K", 512, 3840)] == 8  # global attn_k (k_eq_v: no attn_v)
    assert by_key[("Q6_K", 3840, 15360)] + by_key[("Q4_K", 3840, 15360)] == 48


def test_mini_preset_shapes_skip_lookups_and_dead_kv():
    shapes = model_shapes("g4-e4b-mini:q4_k_m")
    names = {s.example for s in shapes}
    assert "per_layer_token_embd.weight" not in names  # a row lookup, not a matmul
    assert any(s.example == "per_layer_model_proj.weight" for s in shapes)
    # 12 layers, 6 of them KV-shared: their dead attn_k / attn_v are never multiplied
    assert sum(s.count for s in shapes if s.example.endswith(("attn_k.weight", "attn_v.weight"))) <= 12


@pytest.mark.parametrize("model", ["shape12b", "shape12b-q4_0"])
def test_mode_bench_summary_of_a_recorded_run(model):
    recorded = json.loads((HISTORY / f"2026-11-25-h100-mode-bench-{model}.json").read_text())
    rows = recorded["rows"]
    text = summarize(rows, f"{model} replay", recorded["read_gb_s"])
    t = {(r["n"], r["mode"]): r["tokens_per_s"] for r in rows}
    for n in sorted({r["n"] for r in rows}):
        best = max(t[n, "ws"], t[n, "decode_mmq"])
        line = next(line for line in text.splitlines() if line.startswith(f"| {n} |"))
        assert f"| {t[n, 'auto'] / best:.3f} |" in line
    first = min(n for n in {r["n"] for r in rows} if t[n, "decode_mmq"] > t[n, "ws"])
    assert f"decode-MMQ overtakes WS (forced, whole step) first at N = {first}" in text


def test_mode_bench_summary_of_some_modes():
    """A run of some modes only (--modes auto batch-invariant) is summarised with "–" where a ratio needs a mode
    that was not timed (it raised ValueError from max() of no forced mode)."""
    recorded = json.loads((HISTORY / "2026-11-25-h100-mode-bench-shape12b.json").read_text())
    rows = [r for r in recorded["rows"] if r["mode"] in ("auto", "batch-invariant")]
    text = summarize(rows, "some modes", recorded["read_gb_s"])
    t = {(r["n"], r["mode"]): r["tokens_per_s"] for r in rows}
    line = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert f"| – | – | {t[1, 'batch-invariant'] / t[1, 'auto']:.3f} |" in line
    assert "decode-MMQ vs WS: not timed (needs both forced modes)" in text
    ws_rows = [r for r in recorded["rows"] if r["mode"] == "ws"]
    ws_1 = next(r["tokens_per_s"] for r in ws_rows if r["n"] == 1)
    assert f"| 1 | {ws_1:.1f} | ws | – | – |" in summarize(ws_rows, "ws only", recorded["read_gb_s"])


def test_step_kernels_table_from_ncu_csv():
    """harness/step_kernels.py reads ncu's --csv (units as ncu writes them, thousands separators, other lines around
    the table) and groups launches by kernel name with hand-counted totals and shares."""
    from gemma_oracle.harness.perf.step_kernels import kernel_times, summarize

    header = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
              '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')

    def row(i, name, unit, value):
        return (f'"{i}","1","python3","h","{name}","1","7","(128, 1, 1)","(1, 1, 1)","0","9.0",'
                f'"Command line profiler metrics","gpu__time_duration.sum","{unit}","{value}"')

    text = "\n".join(["==PROF== Connected", header, row(0, "mmq_q4_k_bm64_bn8", "usecond", "30.00"),
                      row(1, "rms_norm_f32(const float *, int)", "nsecond", "2,500"),
                      row(2, "mmq_q4_k_bm64_bn8", "usecond", "10.00"), "==PROF== Disconnected"])
    launches = kernel_times(text)
    assert launches == [("mmq_q4_k_bm64_bn8", 30.0), ("rms_norm_f32(const float *, int)", 2.5),
                        ("mmq_q4_k_bm64_bn8", 10.0)]
    table = summarize(launches, "t")
    assert "3 kernel launches, 0.043 ms" in table
    assert "| mmq_q4_k_bm64_bn8 | 2 | 40.0 | 94.1% | 20.00 |" in table
    assert "| rms_norm_f32 | 1 | 2.5 | 5.9% | 2.50 |" in table
    with pytest.raises(ValueError, match="no ncu CSV header"):
        kernel_times("==PROF== nothing profiled")


def test_mode_bench_times_modes_round_robin(monkeypatch):
    """harness/mode_bench.py's loop without a GPU (a stand-in engine and CUDA events that read a fake clock): every
    mode decodes its own sequences at the same contexts, the timed runs alternate over the modes, the engine's slots
    hold every mode's sequences at once and come back after each N, and each step's time is the clock's."""
    import sys
    import types

    from gemma_oracle.harness.perf import mode_bench

    clock = {"t": 0.0}
    order = []

    class Seq:
        def __init__(self, eng):
            self.length, self.eng = 0, eng
            eng.live += 1
            assert eng.live <= eng.max_sequences, "more live sequences than the engine has slots"

        def __del__(self):
            self.eng.live -= 1

    class FakeEngine:
        vocab_size = 100
        route_mode = "auto"
        config = None  # read only by kv_read_bytes, replaced below

        def __init__(self, model, *, kv_dtype, max_sequences, max_context, prefill_chunk, route_mode):
            self.max_sequences, self.max_context, self.live = max_sequences, max_context, 0
            self._graphs, self.routes_served = {}, {}

        def new_sequence(self):
            return Seq(self)

        def set_route_mode(self, mode):
            self.route_mode = mode
            self._graphs.clear()

        def prefill(self, s, prompt):
            s.length += len(prompt)

        def decode(self, seqs, tokens):
            assert len(seqs) == len(tokens)
            for s in seqs:
                s.length += 1
                assert s.length <= self.max_context
            clock["t"] += {"ws": 4.0, "decode_mmq": 1.0, "auto": 1.0, "batch-invariant": 2.0}[self.route_mode]
            order.append(self.route_mode)
            self.routes_served[len(seqs)] = {"m": "decode_mmq" if self.route_mode != "ws" else "ws"}

    class Event:
        def record(self):
            self.t = clock["t"]

        def synchronize(self):
            pass

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: b.t - a.t))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr("gemma_oracle.engine.gpu_engine.CupyEngine", FakeEngine, raising=False)
    monkeypatch.setattr("gemma_oracle.harness.perf.devices.gpu_step_weight_bytes", lambda engine: 1000)
    kv_positions = []
    monkeypatch.setattr("gemma_oracle.harness.perf.roofline.kv_read_bytes", lambda cfg, position, itemsize: kv_positions.append(
        (position, itemsize)) or 10 * position)
    rows = mode_bench.bench_modes("m", n_list=(1, 3), steps=4, warmup=2, repeats=3, prompt_len=8, log=lambda m: None)
    by = {(r["n"], r["mode"]): r for r in rows}
    assert by[3, "ws"]["step_ms"] == 4.0 and by[3, "auto"]["tokens_per_s"] == 3000.0
    assert by[1, "batch-invariant"]["routes"] == "decode_mmq:1" and by[1, "ws"]["routes"] == "ws:1"
    # same contexts for every mode: prompt 8 + warmup 2 + 3 repeats x (1 capture step + 4 timed) = 25, mean 25
    assert {r["mean_context"] for r in rows} == {25.0}
    # timed positions 11..14, 16..19, 21..24 (captures at 10, 15, 20): mean 17.5; KV read per step = N rows' F16 KV
    assert {r["mean_position"] for r in rows} == {17.5}
    assert set(kv_positions) == {(18, 2)}
    assert by[3, "auto"]["kv_bytes"] == 3 * 180 and by[1, "ws"]["kv_bytes"] == 180
    # timed runs alternate: after the warmups (ws, ws, mmq, mmq, ...), each repeat visits ws, mmq, auto, batch-inv
    timed = order[8:8 + 4 * 5]
    assert [timed[i * 5] for i in range(4)] == ["ws", "decode_mmq", "auto", "batch-invariant"]


def test_ple_table_verdicts():
    """harness/ple_measure.py: "faster uncaptured" compares both sides uncaptured; "engine keeps" compares the
    router inside the step graph with cuBLAS, which CuPy cannot capture (numbers of the 2026-11-25 H100 run, N = 1,
    and a made-up row where cuBLAS wins both)."""
    from gemma_oracle.harness.perf.ple_measure import format_table

    rows = [dict(n=1, step_ms=0.466, ple_router_ms=0.047, ple_router_eager_ms=1.012, ple_cublas_ms=0.613,
                 ple_share=0.047 / 0.466, routes="ws"),
            dict(n=2, step_ms=1.0, ple_router_ms=0.9, ple_router_eager_ms=1.5, ple_cublas_ms=0.5, ple_share=0.9,
                 routes="gemm_n")]
    lines = format_table(rows, "t").splitlines()
    assert lines[4] == "| 1 | 0.466 | 0.047 (ws) | 10.1 % | 1.012 | 0.613 | cuBLAS | router |"
    assert lines[5] == "| 2 | 1.000 | 0.900 (gemm_n) | 90.0 % | 1.500 | 0.500 | cuBLAS | cuBLAS |"


def test_dq_tile_selection_by_kind_or_name():
    from gemma_oracle.kernels.dq_mma import TILES

    direct = select_dq_tiles(("direct",))
    assert direct and all(TILES[t].kind == "direct" for t in direct)
    assert set(direct) | set(select_dq_tiles(("smem",))) == set(TILES)
    assert select_dq_tiles(("w4_m1_bn8_kb4_pf0", "direct")) == ("w4_m1_bn8_kb4_pf0", *direct)
    assert select_dq_tiles(None) == tuple(TILES)
    with pytest.raises(ValueError, match=r"--dq-tiles: unknown \['wide'\]; expected tile kinds"):
        select_dq_tiles(("direct", "wide"))


def test_route_tuning_rejects_an_unknown_dq_tile_before_touching_the_gpu(capsys):
    with pytest.raises(SystemExit) as e:
        route_tuning_main(["--dq-tiles", "wide"])
    assert e.value.code == 2 and "--dq-tiles: unknown ['wide']" in capsys.readouterr().err


def test_suggested_packed_rules_weigh_each_shape_by_its_count():
    """The packed tile a step should use at each timed N is the one with the least count-weighted time over the
    shapes every tile was timed on (a shape with a missing tile is left out), the tall shapes (rows >= TALL x cols)
    apart where another tile wins there, and the rules read back as tiles."""
    import pandas as pd

    from gemma_oracle.harness.perf.route_tuning import (mmq_step_us, packed_step_us, packed_tile_lines,
                                                        suggested_packed_rules)
    from gemma_oracle.kernels.packed_mma import parse_tile_rules

    def row(n, shape, tile, us):
        t, r, c, count = shape
        return dict(type=t, rows=r, cols=c, count=count, n=n, route="packed_mma", tile=tile, us=us)

    big, mid, small = ("Q4_K", 3840, 15360, 96), ("Q4_K", 4096, 3840, 40), ("Q4_K", 512, 3840, 8)
    tall, odd = ("Q4_K", 15360, 3840, 96), ("Q6_K", 262144, 3840, 1)  # rows >= 4 cols
    rows = [row(1, big, "m2_n1_d3", 20.0), row(1, big, "m1_n1_d4", 21.0),
            row(1, small, "m2_n1_d3", 9.0), row(1, small, "m1_n1_d4", 5.0),   # 8 x 4 us less, 96 x 1 us more
            row(1, tall, "m2_n1_d3", 20.0), row(1, tall, "m1_n1_d4", 22.0),   # the same tile as the others
            row(32, big, "m2_n1_d3", 60.0), row(32, big, "m1_n4_d3", 40.0),
            row(32, small, "m2_n1_d3", 10.0), row(32, small, "m1_n4_d3", 30.0),  # 8 x 20 more, 96 x 20 less
            row(32, mid, "m2_n1_d3", 30.0), row(32, mid, "m1_n4_d3", 31.0),
            row(32, tall, "m2_n1_d3", 35.0), row(32, tall, "m1_n4_d3", 50.0),  # another tile than the others'
            row(32, odd, "m2_n1_d3", 1.0)]  # only one tile timed there: the shape is left out at N = 32
    df = pd.DataFrame(rows)
    table = packed_step_us(df)
    assert table.loc[1, "m2_n1_d3"] == 96 * 20.0 + 8 * 9.0 + 96 * 20.0
    assert table.loc[32, "m2_n1_d3"] == 96 * 60.0 + 8 * 10.0 + 40 * 30.0 + 96 * 35.0
    assert packed_step_us(df, tall=False).loc[32, "m2_n1_d3"] == 96 * 60.0 + 8 * 10.0 + 40 * 30.0
    rules = suggested_packed_rules(df)
    assert rules == "32@4:m2_n1_d3,32:m1_n4_d3,1:m2_n1_d3"
    assert parse_tile_rules(rules) == ((32, 4.0, "m2_n1_d3"), (32, 0.0, "m1_n4_d3"), (1, 0.0, "m2_n1_d3"))
    # decode-MMQ's bar: its fastest tile per shape at the shape's own K split, count-weighted
    mmq_rows = [dict(type="Q4_K", rows=15360, cols=3840, count=96, n=1, route="decode_mmq", tile=t, us=us,
                     auto_slices=True) for t, us in (("dp4a_bn1", 17.5), ("bm64_bn8", 30.0))]
    mmq_rows += [dict(type="Q4_K", rows=512, cols=3840, count=8, n=1, route="decode_mmq", tile="dp4a_bn1", us=us,
                      auto_slices=own) for us, own in ((5.5, True), (1.0, False))]  # another K split: left out
    both = pd.concat([df.assign(auto_slices=True), pd.DataFrame(mmq_rows)], ignore_index=True)
    assert mmq_step_us(both) == {1: 96 * 17.5 + 8 * 5.5}
    lines = packed_tile_lines(both)
    assert any(line.startswith("| 1 |") and line.endswith(f"| {96 * 17.5 + 8 * 5.5:.0f} |") for line in lines)
    assert any(line.startswith("| 32 |") and line.endswith("| – |") for line in lines)


def test_mode_bench_json_is_replaced_whole_and_says_whether_complete(tmp_path):
    """After each N the bench rewrites its JSON with every row so far (complete: false), at the end with complete:
    true; no .part file is left behind, and side_by_side reads the partial file."""
    from gemma_oracle.harness.perf.mode_bench import write_bench_json
    from gemma_oracle.harness.perf.side_by_side import load_model_run

    path = tmp_path / "mode-bench-m.json"
    meta = {"device": "GPU", "launch": "plain", "read_gb_s": 3000.0, "n_asked": [1, 2], "modes_asked": ["auto"]}
    row = dict(n=1, mode="auto", tokens_per_s=170.0, weight_bytes=7e9, kv_bytes=1e8)
    write_bench_json(path, meta, [row], complete=False)
    assert json.loads(path.read_text())["complete"] is False and not list(tmp_path.glob("*.part"))
    (tmp_path / "llamacpp-m-1.txt").write_text("| B | S_TG t/s |\n|---|---|\n| 1 | 150.0 |\n")
    run = load_model_run(tmp_path, "m")
    assert not run.complete and run.modes == {"auto": {1: 170.0}}
    write_bench_json(path, meta, [row, {**row, "n": 2, "tokens_per_s": 300.0}], complete=True)
    data = json.loads(path.read_text())
    assert data["complete"] is True and [r["n"] for r in data["rows"]] == [1, 2] and data["n_asked"] == [1, 2]
    assert load_model_run(tmp_path, "m").complete


def test_packed_cap_policies_sum_each_shapes_capped_split():
    """A cap C policy takes each shape at min(its own split, C) slices (a shape already at or under C keeps its own
    rows), with each shape's fastest tile or the one tile fastest over all shapes, count-weighted."""
    import pandas as pd

    from gemma_oracle.harness.perf.route_tuning import packed_cap_lines, packed_cap_us

    def row(shape, tile, slices, own, us):
        t, r, c, count = shape
        return dict(type=t, rows=r, cols=c, count=count, n=1, route="packed_mma", tile=tile, slices=slices,
                    auto_slices=own, us=us)

    wide, gate = ("Q4_K", 3840, 15360, 24), ("Q4_K", 15360, 3840, 96)  # own splits 16 and 4
    rows = [row(wide, "a", 16, True, 20.0), row(wide, "b", 16, True, 22.0),
            row(wide, "a", 8, False, 25.0), row(wide, "b", 8, False, 21.0),
            row(gate, "a", 4, True, 18.0), row(gate, "b", 4, True, 19.0)]
    table = packed_cap_us(pd.DataFrame(rows)).set_index("policy")
    assert table.loc["own", "best_tile_a_shape"] == 24 * 20.0 + 96 * 18.0
    assert table.loc["cap 8", "best_tile_a_shape"] == 24 * 21.0 + 96 * 18.0  # the gate matrix keeps its 4 slices
    assert table.loc["cap 8", "one_tile"] == "a" and table.loc["cap 8", "best_one_tile"] == 24 * 25.0 + 96 * 18.0
    lines = packed_cap_lines(pd.DataFrame(rows))
    assert f"| 1 | cap 8 | {24 * 21.0 + 96 * 18.0:.0f} | {24 * 25.0 + 96 * 18.0:.0f} (a) |" in lines
