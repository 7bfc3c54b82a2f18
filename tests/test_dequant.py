"""gemma_oracle.kernels.reference.dequant against gguf-py 0.19's dequantizer: bitwise equal on random valid blocks.

Random bytes make random codes, scale packings and high bits. Only the fp16 scale fields are forced to finite
values, because random fp16 bits include NaN/inf, whose payloads would make the comparison meaningless.
The plain float types use random bit patterns with a finite exponent (zeros, subnormals and -0.0 included).
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants

from gemma_oracle.kernels.reference.dequant import BLOCK_SIZES, DEQUANTIZERS, dequantize, row_bytes

SEED = 20261107

# byte offsets of the fp16 scale fields inside one block (ggml-common.h)
FP16_FIELDS = {
    "Q4_0": (0,),
    "Q5_0": (0,),
    "Q8_0": (0,),
    "Q4_K": (0, 2),  # d, dmin
    "Q5_K": (0, 2),  # d, dmin
    "Q6_K": (208,),  # d sits at the end of the block
}

# finite bit patterns of the plain float types: (unsigned dtype, exponent mask); exponent all-ones is NaN/inf
FLOAT_BITS = {
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
}

# GGUFReader and GGUFWriter keep F32/F16 tensors in these dtypes; everything else travels as bytes
NATIVE_DTYPES = {"F32": np.float32, "F16": np.float16}

# numpy shapes in values (last axis = ne[0]); awkward row counts, one 3-D case per block size
SHAPES = {
    1: [(1, 1), (3, 7), (5, 512), (2, 3, 40)],
    32: [(1, 32), (3, 96), (5, 512), (2, 3, 64)],
    256: [(1, 256), (3, 512), (7, 768), (2, 3, 256)],
}


def _shape_id(shape: tuple[int, ...]) -> str:
    return "r" + "x".join(map(str, shape[:-1])) + f"-c{shape[-1]}"


CASES = [
    pytest.param(name, shape, id=f"{name.lower()}-{_shape_id(shape)}")
    for name, (block, _) in BLOCK_SIZES.items()
    for shape in SHAPES[block]
]


def random_blocks(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Valid random bytes of a `name` tensor with `shape` values (uint8, last axis in bytes)."""
    nbytes = row_bytes(name, shape[-1])
    if name in FLOAT_BITS:
        utype, exponent = FLOAT_BITS[name]
        bits = rng.integers(0, np.iinfo(utype).max, size=shape, dtype=utype, endpoint=True)
        top_bit = utype(exponent & ~(exponent >> 1))
        bits = np.where(bits & exponent == exponent, bits & ~top_bit, bits)  # NaN/inf -> a finite value
        return bits.view(np.uint8).reshape(*shape[:-1], nbytes)
    raw = rng.integers(0, 256, size=(*shape[:-1], nbytes), dtype=np.uint8)
    blocks = raw.reshape(-1, BLOCK_SIZES[name][1])
    for offset in FP16_FIELDS[name]:
        # magnitudes 2^-16 .. 2^2 (fp16 subnormals included), either sign: any finite scale must decode alike
        scale = rng.choice([-1.0, 1.0], size=len(blocks)) * 2.0 ** rng.uniform(-16, 2, size=len(blocks))
        blocks[:, offset:offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw


def assert_bitwise_equal(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.dtype == np.float32, f"{what}: dtype {ours.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs gguf {theirs.shape}"
    assert np.array_equal(ours, theirs), f"{what}: values differ from gguf-py"
    # array_equal treats -0.0 == 0.0; the bit patterns must match too
    differ = np.flatnonzero(ours.view(np.uint32) != theirs.view(np.uint32))
    assert differ.size == 0, f"{what}: {differ.size} bit patterns differ, first at flat index {differ[0]}"


@pytest.mark.parametrize("name, shape", CASES)
def test_dequantizer_matches_gguf_bitwise(name, shape):
    rng = np.random.default_rng([SEED, *map(ord, name), *shape])
    raw = random_blocks(name, shape, rng)
    qtype = GGMLQuantizationType[name]
    assert_bitwise_equal(DEQUANTIZERS[name](raw), quants.dequantize(raw, qtype), f"{name} {shape}")


@pytest.mark.parametrize("name, shape", CASES)
def test_dequantize_by_ne(name, shape):
    """dequantize() takes GGUF dims (ne[0] first) and returns numpy shape reversed(ne), from bytes or flat."""
    rng = np.random.default_rng([SEED + 1, *map(ord, name), *shape])
    raw = random_blocks(name, shape, rng)
    ne = tuple(reversed(shape))
    expected = quants.dequantize(raw, GGMLQuantizationType[name])
    assert_bitwise_equal(dequantize(raw, name, ne), expected, f"{name} ne={ne}")
    assert_bitwise_equal(dequantize(raw.reshape(-1), name, ne), expected, f"{name} ne={ne} flat bytes")


@pytest.mark.parametrize("name", list(NATIVE_DTYPES), ids=str.lower)
def test_native_float_views(name):
    """GGUFReader hands F32/F16 tensors out in their own dtype; both entry points accept that."""
    rng = np.random.default_rng(SEED)
    values = rng.standard_normal((3, 40)).astype(NATIVE_DTYPES[name])
    expected = quants.dequantize(values.view(np.uint8), GGMLQuantizationType[name])
    assert_bitwise_equal(DEQUANTIZERS[name](values), expected, f"{name} native")
    assert_bitwise_equal(dequantize(values, name, (40, 3)), expected, f"{name} native by ne")


def test_gguf_reader_tensors(tmp_path):
    """Whatever form GGUFReader gives a tensor's data in, dequantize(data, type, shape) decodes it as gguf-py does."""
    rng = np.random.default_rng(SEED)
    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "gemma4")
    shapes = {"F32": (3, 40), "F16": (2, 64), "BF16": (6, 64), "Q4_0": (2, 64), "Q5_0": (3, 32),
              "Q8_0": (2, 96), "Q4_K": (3, 512), "Q5_K": (2, 256), "Q6_K": (5, 256)}
    for name, shape in shapes.items():
        raw = random_blocks(name, shape, rng)
        if name in NATIVE_DTYPES:
            writer.add_tensor(f"t.{name}", raw.view(NATIVE_DTYPES[name]))
        else:
            writer.add_tensor(f"t.{name}", raw, raw_dtype=GGMLQuantizationType[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tensors = GGUFReader(str(path)).tensors
    assert sorted(t.tensor_type.name for t in tensors) == sorted(shapes)
    for t in tensors:
        name, ne = t.tensor_type.name, tuple(int(n) for n in t.shape)
        assert ne == tuple(reversed(shapes[name]))
        ours = dequantize(t.data, name, ne)
        assert_bitwise_equal(ours, quants.dequantize(t.data, t.tensor_type).reshape(ours.shape), f"reader {name}")


@pytest.mark.parametrize("name", list(BLOCK_SIZES), ids=str.lower)
def test_wrong_byte_length_raises(name):
    block, size = BLOCK_SIZES[name]
    torn = np.zeros((2, size * 3 + 1), dtype=np.uint8)  # one byte past a whole number of blocks
    with pytest.raises(ValueError, match=name):
        DEQUANTIZERS[name](torn)
    short = np.zeros(row_bytes(name, 4 * block) * 3 - 1, dtype=np.uint8)  # one byte short of ne
    with pytest.raises(ValueError, match=name):
        dequantize(short, name, (4 * block, 3))
    if block > 1:
        with pytest.raises(ValueError, match=name):
            row_bytes(name, 4 * block + 1)  # a row that is not a whole number of blocks


def test_wrong_dtype_and_unknown_type_raise():
    with pytest.raises(ValueError, match="Q4_K"):
        dequantize(np.zeros(72, dtype=np.float32), "Q4_K", (256, 2))  # right byte count, wrong dtype
    with pytest.raises(ValueError, match="Q3_K"):
        dequantize(np.zeros(110, dtype=np.uint8), "Q3_K", (256,))
