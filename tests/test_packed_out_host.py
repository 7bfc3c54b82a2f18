"""CPU tests of kernels/packed_out.py: which ffn_act.cu kernel writes gelu_tanh_mul(..., packed=True)'s records, and
its geometry. No GPU and no cupy needed: the plan is a function of the shape and of whether the device has thread
block clusters; the entry names and constants are read from the .cu sources.
"""
from __future__ import annotations

import re

import pytest

from gemma_oracle.kernels import packed_out as po
from gemma_oracle.kernels._compile import CUDA_DIR

KS = (64, 128, 192, 640, 3840, 15360)
ROWS = (1, 3, 9, 17)


def test_entries_and_constants_match_the_cuda_sources():
    ffn = (CUDA_DIR / "ffn_act.cu").read_text()
    for entry in po.ENTRIES:
        assert re.search(rf'extern "C" __global__ void __launch_bounds__\(F16_ROWS_THREADS\)\s+{entry}\(', ffn), entry
    assert f"#define F16_ROWS_THREADS {po.THREADS}" in (CUDA_DIR / "f16_row.cuh").read_text()
    assert po.CLUSTER_MAX == 8  # the portable cluster size: the launch sets no non-portable attribute
    # the kernel's split of a row's groups is the one group_bounds describes
    assert "j0 = rank * groups / blocks, j1 = (rank + 1) * groups / blocks" in ffn


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("rows", ROWS)
def test_cluster_plan(rows, k):
    plan = po.plan_gelu_tanh_mul_packed(rows, k, clusters=True)
    c = min(8, k // 64)
    assert po.cluster_blocks(k) == c
    assert plan.entry == "gelu_tanh_mul_packed_cluster_f32"
    assert plan.grid == (c, rows, 1) and plan.cluster == (c, 1, 1) and plan.block == (256, 1, 1)
    assert all(g % d == 0 for g, d in zip(plan.grid, plan.cluster))  # launch.py's rule


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("rows", ROWS + (65536, 200000))
def test_one_block_a_row_without_clusters_or_past_the_grid_y_limit(rows, k):
    plans = [po.plan_gelu_tanh_mul_packed(rows, k, clusters=False)]
    if rows > po.GRID_Y_MAX:
        plans.append(po.plan_gelu_tanh_mul_packed(rows, k, clusters=True))
    for plan in plans:
        assert plan.entry == "gelu_tanh_mul_packed_f32"
        assert plan.grid == (rows, 1, 1) and plan.block == (256, 1, 1) and plan.cluster is None


@pytest.mark.parametrize("k", KS + (64 * 9, 64 * 15, 64 * 17, 64 * 241))
def test_group_bounds_cover_the_row_once_and_never_leave_a_block_idle(k):
    c = po.cluster_blocks(k)
    bounds = po.group_bounds(k, c)
    assert bounds[0][0] == 0 and bounds[-1][1] == k // 64
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [j1 - j0 for j0, j1 in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1  # as even as possible


@pytest.mark.parametrize("rows,k,match", [(0, 128, "rows: expected >= 1"), (-1, 128, "rows: expected >= 1"),
                                          (1, 0, "k: expected a positive multiple of 64"),
                                          (1, 96, "k: expected a positive multiple of 64"),
                                          (1, -64, "k: expected a positive multiple of 64")])
def test_plan_refuses_bad_shapes(rows, k, match):
    for clusters in (False, True):
        with pytest.raises(ValueError, match=match):
            po.plan_gelu_tanh_mul_packed(rows, k, clusters)
