"""CPU tests of the producers' Q8_1 output (kernels/q8_1_out.py) and of the engine steps that use it.

No GPU and no cupy needed: the plans validate from shapes, dtypes, flags and addresses, so numpy arrays stand in for
device arrays; the entry points are read from the .cu sources.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gemma_oracle.engine.gpu_engine import NORM_STEPS
from gemma_oracle.engine.inventory import expected_tensors
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.kernels import q8_1_out as qo
from gemma_oracle.kernels._compile import source_path
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES

HEAD_DIMS = (64, 128, 256, 512)  # gemma_oracle.kernels.attention.HEAD_DIMS (that module needs cupy)


def f32(*shape) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def u8(*shape) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def test_entries_are_in_the_cuda_sources():
    ffn = source_path("ffn_act").read_text()
    assert re.search(r'extern "C" __global__ void gelu_tanh_mul_q8_1_f32\(', ffn)
    att = source_path("attention").read_text()
    bodies = (source_path("attention").parent / "attention.cuh").read_text()  # the merge body and its constants
    macro = att[att.index("#define ATTN_MERGE_ENTRY(D)"):]
    assert "attn_merge_d##D(" in macro and "attn_merge_q8_1_d##D(" in macro
    assert sorted(int(d) for d in re.findall(r"^ATTN_MERGE_ENTRY\((\d+)\)$", att, re.M)) == list(HEAD_DIMS)
    # the launcher's block for the Q8_1 merge is the kernel's __launch_bounds__ and thread count: max(D, 128)
    assert "#define MERGE_Q8_1_THREADS(D) ((D) > MERGE_THREADS ? (D) : MERGE_THREADS)" in bodies
    assert "(max(d, MERGE_THREADS),)" in (source_path("attention").parent.parent / "attention.py").read_text()


def test_elementwise_blocks_are_whole_warps():
    """gelu_tanh_mul_q8_1_f32 needs blockDim % 32 == 0 (a warp = one Q8_1 block in every grid-stride round)."""
    src = (source_path("ffn_act").parent.parent / "ffn_act.py").read_text()
    threads = int(re.search(r"^ELEMENTWISE_THREADS = (\d+)", src, re.M).group(1))
    assert threads % 32 == 0


@pytest.mark.parametrize("rows,k", [(1, 256), (3, 800), (129, 15360), (0, 2560)])
def test_plan_gelu_tanh_mul_q8_1(rows, k):
    plan = qo.plan_gelu_tanh_mul_q8_1(f32(rows, k), f32(rows, k))
    assert (plan.rows, plan.k, plan.q_shape) == (rows, k, (rows, k // 32 * BLOCK_BYTES))
    g = f32(rows, k)
    qo.plan_gelu_tanh_mul_q8_1(g, f32(rows, k), out=g, out_q=u8(*plan.q_shape))  # in place on gate
    u = f32(rows, k)
    qo.plan_gelu_tanh_mul_q8_1(f32(rows, k), u, out=u)  # in place on up


@pytest.mark.parametrize("hq,d", [(4, 64), (16, 256), (8, 512)])
def test_attention_q8_1_plan_is_the_flat_row(hq, d):
    out = f32(3, hq, d)
    plan = qo.q8_1_out_plan("q", 3, hq * d, u8(3, hq * d // 32 * BLOCK_BYTES), out=out)
    assert plan.q_shape == (3, hq * d // 32 * BLOCK_BYTES)


def _out_q_overlapping_out():
    """out [4, 256] float32 and out_q [4, 288] sharing one block's bytes of one buffer."""
    raw = u8(4 * 256 * 4 + 4 * 8 * BLOCK_BYTES)
    y = raw[: 4 * 256 * 4].view(np.float32).reshape(4, 256)
    q = raw[4 * 256 * 4 - BLOCK_BYTES:][: 4 * 8 * BLOCK_BYTES].reshape(4, 8 * BLOCK_BYTES)
    return qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(4, 256), out=y, out_q=q)


@pytest.mark.parametrize("call,match", [
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 100), f32(4, 100)), "gate: Q8_1 needs a row length"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 0), f32(4, 0)), "gate: Q8_1 needs a row length"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256).astype(np.float64), f32(4, 256)), "gate: expected dtype float32"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(1024), f32(1024)), "gate: expected 2-D"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1([[0.0] * 256], f32(1, 256)), "gate: expected an array"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 512)[:, ::2], f32(4, 256)), "gate: must be C-contiguous"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(3, 256)), "up: expected shape"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(4, 256), out=f32(4, 288)), "out: expected shape"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(4, 256), out_q=u8(4, 287)), "out_q: expected shape"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(4, 256), out_q=u8(4, 289)[:, 1:]), "out_q: must be C-"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(4, 256), out_q=u8(4 * 288 + 1)[1:].reshape(4, 288)),
     "out_q: must start 4-byte aligned"),
    (lambda: qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), f32(4, 256), out_q=f32(4, 288)), "out_q: expected dtype uint8"),
    (_out_q_overlapping_out, "out_q: overlaps out"),
    (lambda: qo.q8_1_out_plan("q", 3, 100, None), "q: Q8_1 needs a row length"),
], ids=["k-not-32", "k-0", "dtype", "rank", "not-array", "strided", "up-shape", "out-shape", "out_q-shape",
        "out_q-strided", "out_q-align", "out_q-dtype", "out_q-overlaps-out", "attention-k"])
def test_plans_refuse_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_overlaps_only_in_place():
    buf = f32(5, 256)
    gate, up = buf[:4], f32(4, 256)
    with pytest.raises(ValueError, match=r"out: overlaps gate \(only exactly gate itself"):
        qo.plan_gelu_tanh_mul_q8_1(gate, up, out=buf[1:])
    q = u8(4 * 256 * 4)
    with pytest.raises(ValueError, match="out_q: overlaps up"):
        qo.plan_gelu_tanh_mul_q8_1(f32(4, 256), q.view(np.float32).reshape(4, 256), out_q=q[:4 * 288].reshape(4, 288))


# --- the engine -------------------------------------------------------------------------------------------------------

def test_fused_and_separate_producer_steps_have_one_interface():
    fused, separate = NORM_STEPS[True], NORM_STEPS[False]
    for step in ("gelu_mul", "attention"):
        f, s = getattr(fused, step).__code__, getattr(separate, step).__code__
        assert f.co_varnames[:f.co_argcount] == s.co_varnames[:s.co_argcount]
        assert "quantize" in f.co_varnames[:f.co_argcount]
    # both can also write their output's packed-MMA records (attention from its fused launch: kernels/attention.py)
    for step in ("gelu_mul", "attention"):
        assert "packed" in getattr(fused, step).__code__.co_varnames
        assert "packed" in getattr(separate, step).__code__.co_varnames


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_producer_consumers_are_the_models_matrices(preset):
    """The names whose routes decide whether attention and gelu make Q8_1 blocks are matrices of the model: a
    misspelt one would never route to decode-MMQ, and the blocks would silently come from a separate launch."""
    cfg = PRESETS[preset].config(vocab_size=512)
    tensors = {t.name: t for t in expected_tensors(cfg)}
    for i in range(cfg.n_layers):
        names = [f"blk.{i}.attn_output.weight", f"blk.{i}.ffn_down.weight"]
        names += [f"blk.{i}.proj.weight"] if cfg.ple_width else []
        assert all(tensors[n].kind == "matrix" for n in names), names
