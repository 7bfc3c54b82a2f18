"""Host-side plans of the Q8_1 output that a producer kernel writes beside its float32 output.

The kernels that make a decode-MMQ matmul's input (gelu_tanh_mul_q8_1_f32 in ffn_act.cu for ffn_down and the PLE
proj, attn_merge_q8_1_d<D> in attention.cu for attn_output) can write its Q8_1 blocks in the same launch, bit for bit
what quantize_q8_1 writes for the float32 output (the .cu headers say why), which saves a quantize_q8_1 launch per
matmul. The launchers are `gemma_oracle.kernels.ffn_act.gelu_tanh_mul(..., quantize=True)` and
`gemma_oracle.kernels.attention.decode_attention(..., quantize=True)`; they validate with the plans here, which need no CuPy (so
they run on numpy arrays in the CPU tests). A bad argument raises ValueError naming it (gemma_oracle.kernels.dequant.check_array).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._checks import check_no_overlap
from gemma_oracle.kernels.dequant import check_array
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES, QK8_1


@dataclass(frozen=True)
class Q8_1OutPlan:
    rows: int  # rows of the float32 output's [rows, K] view
    k: int
    q_shape: tuple[int, int]  # [rows, K / 32 * 36]


def q8_1_out_plan(arg: str, rows: int, k: int, out_q, **others) -> Q8_1OutPlan:
    """The Q8_1 output of a float32 output viewed as [rows, k]: k must be a positive multiple of 32 (blocks never
    straddle a row; `arg` names the argument that sets k); out_q, when given, uint8 [rows, k / 32 * 36], 4-byte
    aligned (32-bit stores), sharing no byte with the arrays in `others`."""
    if k <= 0 or k % QK8_1:
        raise ValueError(f"{arg}: Q8_1 needs a row length that is a positive multiple of {QK8_1}, got {k}")
    q_shape = (rows, k // QK8_1 * BLOCK_BYTES)
    if out_q is not None:
        check_array("out_q", out_q, dtype=np.uint8, ndim=2, shape=q_shape, align=4)
        check_no_overlap({"out_q": out_q}, others)
    return Q8_1OutPlan(rows, k, q_shape)


def plan_gelu_tanh_mul_q8_1(gate, up, *, out=None, out_q=None) -> Q8_1OutPlan:
    """gelu_tanh_mul with its Q8_1 output: gate, up float32 [R, K], K % 32 == 0; out (float32 [R, K]) may be gate or
    up itself (in place), no other overlap."""
    check_array("gate", gate, dtype=np.float32, ndim=2)
    rows, k = (int(v) for v in gate.shape)
    check_array("up", up, dtype=np.float32, ndim=2, shape=(rows, k))
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=2, shape=(rows, k))
        check_no_overlap({"out": out}, {"gate": gate, "up": up}, in_place=(("out", "gate"), ("out", "up")))
    return q8_1_out_plan("gate", rows, k, out_q, gate=gate, up=up, out=out)
