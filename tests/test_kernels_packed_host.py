"""CPU tests of the packed-MMA layout (kernels/reference/packed.py, the layout kernels/cuda/packed_mma.cu reads): the
records written from the layout's text, read back through what the kernel does with each word and the PTX ISA's
m16n8k16 fragment tables, give dequant-MMA's fp16 weights and f16_rows' activations exactly. The controls show the
round trip failing on a layout that is wrong in the ways a kernel would be (two nibbles swapped, the scale words of
the two rows swapped, Q6_K's high bits one slot off, an activation word off by one step)."""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.kernels.reference import packed as ref
from gemma_oracle.kernels.reference.f16_operands import dequant_f16, f16_rows
from tests.kernel_support import activations, quantized_weights

SHAPES = {"Q4_0": ((1, 64), (7, 320), (37, 256)), "Q4_K": ((1, 256), (16, 512), (37, 256)),
          "Q6_K": ((1, 256), (16, 512), (37, 256))}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint16), b.view(np.uint16))


@pytest.mark.parametrize("t", sorted(SHAPES))
@pytest.mark.parametrize("shape", range(3))
def test_weights_round_trip_through_the_fragments(t, shape):
    rows, cols = SHAPES[t][shape]
    raw = quantized_weights(t, rows, cols)
    packed = ref.pack(raw, t, cols)
    half_bits = {"Q6_K": 14, "Q4_K": 10, "Q4_0": 9}[t]  # twice the bits a weight (Q4_0: d alone, 4.5)
    assert packed.dtype == np.uint32 and packed.size * 64 == -(-rows // 16) * 16 * cols * half_bits
    assert _same_bits(ref.weights_from_registers(packed, t, rows, cols), dequant_f16(raw, t, cols))


@pytest.mark.parametrize("n", (1, 5, 8, 9, 17))
def test_activations_round_trip_through_the_fragments(n):
    x = activations(n, 320, "packed-host") * np.float32(7.0)
    xf, inv = ref.x_fragments(x)
    x16, want_inv = f16_rows(x)
    assert xf.size == -(-n // 8) * 5 * 256
    assert _same_bits(ref.activations_from_registers(xf, n, 320), x16) and np.array_equal(inv, want_inv)
    # the padding tokens of the last tile are zero words
    tail = xf.reshape(-(-n // 8), 5, 2, 8, 4, 4)[-1, :, :, n % 8 or 8:]
    assert not tail.any()
    # x_written: the words of tokens < N, from the record layout [tile h, group, half, lane g, lane t, word]
    token = (8 * np.arange(-(-n // 8))[:, None, None, None, None, None]
             + np.arange(8)[None, None, None, :, None, None])
    want = np.broadcast_to(token < n, (-(-n // 8), 5, 2, 8, 4, 4)).reshape(-1)
    assert np.array_equal(ref.x_written(n, 320), want) and ref.x_written(n, 320).sum() == n * 160


def test_controls_a_wrong_layout_fails_the_round_trip(monkeypatch):
    t, rows, cols = "Q4_K", 16, 256
    raw = quantized_weights(t, rows, cols)
    want = dequant_f16(raw, t, cols)
    swapped = list(ref._NIBBLE_AT)
    swapped[1], swapped[4] = swapped[4], swapped[1]  # a1's low half and a0's high half exchanged
    monkeypatch.setattr(ref, "_NIBBLE_AT", tuple(swapped))
    assert not _same_bits(ref.weights_from_registers(ref.pack(raw, t, cols), t, rows, cols), want)
    monkeypatch.undo()
    monkeypatch.setattr(ref, "_KERNEL_A_ROW8", {0: True, 1: False, 2: True, 3: False})  # row g's scale on row g + 8
    assert not _same_bits(ref.weights_from_registers(ref.pack(raw, t, cols), t, rows, cols), want)
    raw0 = quantized_weights("Q4_0", rows, cols)  # Q4_0's d-only scale words: the row halves matter there too
    assert not _same_bits(ref.weights_from_registers(ref.pack(raw0, "Q4_0", cols), "Q4_0", rows, cols),
                          dequant_f16(raw0, "Q4_0", cols))
    monkeypatch.undo()
    good0 = ref.pack(raw0, "Q4_0", cols).reshape(-1, 144).copy()
    good0[:, 128:144] = good0[:, 128:144].reshape(-1, 8, 2)[:, :, ::-1].reshape(-1, 16)  # blocks 2j, 2j + 1 swapped
    assert not _same_bits(ref.weights_from_registers(good0.reshape(-1), "Q4_0", rows, cols),
                          dequant_f16(raw0, "Q4_0", cols))
    raw6 = quantized_weights("Q6_K", rows, cols)
    good = ref.pack(raw6, "Q6_K", cols)
    assert _same_bits(ref.weights_from_registers(good, "Q6_K", rows, cols), dequant_f16(raw6, "Q6_K", cols))
    shifted = good.reshape(-1, 224).copy()
    plane = shifted[:, ref.HIGH_AT:ref.Q6_SCALE_AT]
    shifted[:, ref.HIGH_AT:ref.Q6_SCALE_AT] = (plane << np.uint32(4)) | (plane >> np.uint32(28))  # slot i -> i + 1
    assert not _same_bits(ref.weights_from_registers(shifted.reshape(-1), "Q6_K", rows, cols),
                          dequant_f16(raw6, "Q6_K", cols))
    monkeypatch.setattr(ref, "_PTX_B", {0: (0, 1), 1: (16, 17)})  # b1 read as the next step's values
    x = activations(8, 256, "packed-control")
    with pytest.raises(IndexError):  # the last step's b1 would point past the group ...
        ref.activations_from_registers(ref.x_fragments(x)[0], 8, 256)
    monkeypatch.setattr(ref, "_PTX_B", {0: (1, 0), 1: (8, 9)})  # ... and b0's halves in the wrong order
    assert not _same_bits(ref.activations_from_registers(ref.x_fragments(x)[0], 8, 256), f16_rows(x)[0])


def test_pack_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="Q5_K"):
        ref.pack(quantized_weights("Q5_K", 1, 256), "Q5_K", 256)
    with pytest.raises(ValueError, match="multiple of 64"):
        ref.pack(quantized_weights("Q4_0", 1, 96), "Q4_0", 96)
