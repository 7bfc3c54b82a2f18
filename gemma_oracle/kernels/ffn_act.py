"""Launchers of kernels/cuda/ffn_act.cu: gelu_tanh(gate) * up, the logit softcap, and a row argmax.

CuPy float32 C-contiguous inputs. `out=` may be an input itself (in place, element-wise ops only) or a separate
C-contiguous array of the right shape and dtype. `gelu_tanh_mul(..., quantize=True)` also writes the result's Q8_1
blocks in the same launch (the input of a decode-MMQ ffn_down / PLE proj; kernels/q8_1_out.py plans it), and
`packed=True` its packed-MMA records (the input of a packed-MMA ffn_down; kernels/packed_out.py plans it).
"""
from __future__ import annotations

import cupy as cp

from ._compile import load_module
from .dequant import require_device_arrays

ELEMENTWISE_THREADS = 256
ARGMAX_THREADS = 1024  # ARGMAX_THREADS in ffn_act.cu


def _kernel(name: str):
    return load_module("ffn_act").get_function(name)


def _check(name: str, a, dtype=cp.float32, shape=None) -> None:
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: expected a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected {cp.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def _out(out, shape, dtype, *inputs):
    if out is None:
        return cp.empty(shape, dtype=dtype)
    _check("out", out, dtype, shape)
    for a in inputs:
        if out.data.ptr != a.data.ptr and cp.may_share_memory(out, a):
            raise ValueError("out: overlaps an input without being the same array (only exact in-place is allowed)")
    return out


def elementwise_geometry(n: int) -> tuple[tuple[int], tuple[int]]:
    """Grid-stride loops: the grid size never changes a result."""
    return (max(1, min((n + ELEMENTWISE_THREADS - 1) // ELEMENTWISE_THREADS, 65535)),), (ELEMENTWISE_THREADS,)


def argmax_geometry(rows: int) -> tuple[tuple[int], tuple[int]]:
    """One block of ARGMAX_THREADS per row."""
    return (rows,), (ARGMAX_THREADS,)


def gelu_tanh_mul(gate: cp.ndarray, up: cp.ndarray, out: cp.ndarray | None = None, *, quantize: bool = False,
                  out_q: cp.ndarray | None = None, packed: bool = False, cluster: bool | None = None):
    """gelu_tanh(gate) * up, element-wise; gate and up of one shape (e.g. [R, F]), float32.

    quantize=True returns (y, yq): the same y, and yq = quantize_q8_1(y) bit for bit (uint8 [R, F / 32 * 36], or
    `out_q`), made by the same launch; then gate and up must be [R, F] with F % 32 == 0 (ValueError otherwise).
    packed=True returns (y, (xf, inv)): y's packed-MMA records (kernels/packed_mma.py packed_x(y), bit for bit) from
    the same launch; gate and up [R, F] with R >= 1 and F % 64 == 0. `cluster` picks its kernel (kernels/packed_out.py;
    the same bits): None, a cluster of blocks a row where the device has clusters; False, one block a row; True, the
    cluster kernel (ValueError on a device without clusters)."""
    if quantize and packed:
        raise ValueError("packed: one of quantize (Q8_1 blocks) and packed (packed-MMA records) per launch")
    if cluster is not None and not packed:
        raise ValueError("cluster: given with packed=False (it picks the kernel of the packed-MMA records)")
    if packed:
        return _gelu_tanh_mul_packed(gate, up, out, cluster)
    if quantize:
        return _gelu_tanh_mul_q8_1(gate, up, out, out_q)
    if out_q is not None:
        raise ValueError("out_q: given with quantize=False")
    _check("gate", gate)
    _check("up", up, shape=gate.shape)
    y = _out(out, gate.shape, cp.float32, gate, up)
    if gate.size:
        grid, block = elementwise_geometry(gate.size)
        _kernel("gelu_tanh_mul_f32")(grid, block, (gate, up, y, cp.int64(gate.size)))
    return y


def _gelu_tanh_mul_packed(gate, up, out, cluster: bool | None):
    from .launch import device_is_sm90
    from .packed_mma import GROUP, packed_x_buffers
    from .packed_out import plan_gelu_tanh_mul_packed

    _check("gate", gate)
    _check("up", up, shape=gate.shape)
    if gate.ndim != 2 or gate.shape[0] == 0 or gate.shape[1] == 0 or gate.shape[1] % GROUP:
        raise ValueError(f"gate: packed-MMA records need [R, F] with R >= 1 and F a multiple of {GROUP}, got shape "
                         f"{tuple(gate.shape)}")
    if cluster not in (None, False, True):
        raise ValueError(f"cluster: expected None (the device decides), False or True, got {cluster!r}")
    clusters = device_is_sm90(cp.cuda.Device().id)
    if cluster and not clusters:
        raise ValueError("cluster: True needs thread block clusters (compute capability 9.0 or more); this device "
                         "has none")
    y = _out(out, gate.shape, cp.float32, gate, up)
    rows, k = (int(v) for v in gate.shape)
    plan = plan_gelu_tanh_mul_packed(rows, k, clusters if cluster is None else cluster)
    xf, inv = packed_x_buffers(rows, k)
    _kernel(plan.entry)(plan.grid, plan.block, (gate, up, y, xf, inv, cp.int32(k)), cluster=plan.cluster)
    return y, (xf, inv)


def _gelu_tanh_mul_q8_1(gate, up, out, out_q):
    from .q8_1_out import plan_gelu_tanh_mul_q8_1

    plan = plan_gelu_tanh_mul_q8_1(gate, up, out=out, out_q=out_q)
    require_device_arrays(gate=gate, up=up, out=out, out_q=out_q)
    y = cp.empty(gate.shape, dtype=cp.float32) if out is None else out
    yq = cp.empty(plan.q_shape, dtype=cp.uint8) if out_q is None else out_q
    if gate.size:
        grid, block = elementwise_geometry(gate.size)  # 256-thread blocks: each warp holds whole Q8_1 blocks
        _kernel("gelu_tanh_mul_q8_1_f32")(grid, block, (gate, up, y, yq, cp.int64(gate.size)))
    return y, yq


def softcap(x: cp.ndarray, cap: float, out: cp.ndarray | None = None) -> cp.ndarray:
    """cap * tanh(x / cap), element-wise, float32 (the final logit softcap, spec §2.7)."""
    _check("x", x)
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    y = _out(out, x.shape, cp.float32, x)
    if x.size:
        grid, block = elementwise_geometry(x.size)
        _kernel("softcap_f32")(grid, block, (x, y, cp.int64(x.size), cp.float32(cap)))
    return y


def argmax_rows(x: cp.ndarray, out: cp.ndarray | None = None) -> cp.ndarray:
    """x [R, V] float32 -> int32 [R]: the index of each row's maximum.

    Ties go to the lower index. NaN counts as larger than every number, so a row with a NaN returns the index of
    its first NaN (what np.argmax does); -0.0 == +0.0. Deterministic: the unique maximum of a total order.
    """
    _check("x", x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x: expected [R, V] with V >= 1, got shape {tuple(x.shape)}")
    rows, v = (int(s) for s in x.shape)
    y = _out(out, (rows,), cp.int32)
    if rows:
        grid, block = argmax_geometry(rows)
        _kernel("argmax_rows_f32")(grid, block, (x, y, cp.int32(rows), cp.int32(v)))
    return y
