"""harness.perf.step_split on the host: the packed tiles and K splits a sweep times, and the summary of a split
(the GPU parts: tests/test_bench_gpu.py)."""
from __future__ import annotations

from gemma_oracle.harness.perf.step_split import MatmulCall, StepSplit, packed_candidates, summarize
from gemma_oracle.kernels.packed_mma import TILES


def _call(chunks):
    return MatmulCall(None, (), {"chunks": chunks, "slices": chunks}, None, "packed Q4_0 3840 x 15360", 1)


def test_packed_candidates_cover_every_tile_and_split_a_step_could_take():
    one = packed_candidates(1, _call(8))
    assert {t for t, _, _ in one} == {name for name, t in TILES.items() if t.nt == 1}
    for tile in {t for t, _, _ in one}:
        splits = {(c, s) for t, c, s in one if t == tile}
        # free splits (auto, or a shape's own split changed for both modes) and the own 8 chunks walked by fewer
        assert splits == {(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (8, 1), (8, 2), (8, 4)}
    assert {t for t, _, _ in packed_candidates(32, _call(4))} == set(TILES)
    assert {(c, s) for t, c, s in packed_candidates(32, _call(4)) if t == "m1_n4_d3"} == {
        (1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (4, 1), (4, 2)}
    assert {t for t, _, _ in packed_candidates(16, _call(None))} == {n for n, t in TILES.items() if t.nt <= 2}


def test_summary_names_the_parts_and_the_fastest_sweep_rows():
    split = StepSplit("m.gguf", 1, "auto", 5.0, 1.25, 4.0, 193, 7_000_000_000,
                      [dict(shape="packed Q4_0 a", launches=48, ms=2.0, spread_ms=0.01, weight_bytes=3_000_000_000,
                            gb_s=1500.0, us_per_launch=41.7)],
                      [dict(shape="packed Q4_0 a", tile="m1_n1_d4_x", chunks=8, slices=8, ms=1.6, spread_ms=0.0,
                            gb_s=1875.0),
                       dict(shape="packed Q4_0 a", tile="m2_n1_d3", chunks=4, slices=4, ms=2.5, spread_ms=0.0,
                            gb_s=1200.0)],
                      {"attention": 4.75, "packed_x": 4.9})
    text = summarize([split])
    assert "- without attention: 4.750 ms (its share: 0.250 ms, 5.0 %)" in text
    assert "- without packed_x: 4.900 ms (its share: 0.100 ms, 2.0 %)" in text
    assert "- whole step: 5.000 ms (200.0 t/s)" in text
    assert "- without the matmuls: 1.250 ms (25.0 % of the step)" in text
    assert "- both parts' sum less the step: +0.250 ms" in text
    lines = text.splitlines()
    first = lines.index("| tile | chunks | slices | ms | own / this | GB/s |") + 2
    assert lines[first] == "| m1_n1_d4_x | 8 | 8 | 1.600 | 1.250 | 1875 |"
    assert lines[first + 1].startswith("| m2_n1_d3 | 4 | 4 | 2.500 | 0.800 |")


def test_a_kind_left_out_returns_zeroed_stand_ins_in_order_and_comes_back():
    """without_ops's machinery on host arrays: the recorded outputs' zeroed stand-ins (tuples and None kept) come
    back in call order while the kind is left out, nothing of it runs, and the engine's own steps are back after."""
    import numpy as np

    from gemma_oracle.harness.perf.step_split import _Delegate, _stubbed, record_outputs

    ran = []

    class Norms:
        @staticmethod
        def attention(q):
            ran.append("attention")
            return q + 1.0, None

        @staticmethod
        def norm(x):
            return x * 2.0

    class Engine:
        norms = _Delegate(Norms)

    engine = Engine()

    def forward():
        o1, none = engine.norms.attention(np.full(3, 1.0))
        o2, _ = engine.norms.attention(np.full(2, 5.0))
        return engine.norms.norm(o1), engine.norms.norm(o2), none

    targets = (("norms", "attention"),)
    outputs = record_outputs(forward, targets, engine)
    assert [o[0].tolist() for o in outputs] == [[2.0] * 3, [6.0] * 2] and ran == ["attention"] * 2
    ran.clear()
    with _stubbed(outputs, targets, engine):
        a, b, none = forward()
        again = forward()
    assert a.tolist() == [0.0] * 3 and b.tolist() == [0.0] * 2 and none is None and ran == []
    assert again[0].tolist() == [0.0] * 3
    assert forward()[0].tolist() == [4.0] * 3 and ran == ["attention"] * 2
    assert "attention" not in vars(engine.norms)
