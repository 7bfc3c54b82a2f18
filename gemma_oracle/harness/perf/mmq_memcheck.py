"""Every decode-MMQ tile (kernels/mmq.py TILES), every dequant-MMA tile (kernels/dq_mma.py TILES) and every packed-MMA
tile (kernels/packed_mma.py TILES, on packed copies and activation records of exactly their size) on weights that end
exactly at the end of their allocation.

Run it under `compute-sanitizer --tool memcheck` (scripts/gpu-run memcheck): the memory pool is switched off, so each
weight matrix is its own cudaMalloc of exactly rows x row_bytes bytes, and a load past the last row's last byte is
reported as an out-of-bounds global read (the pool's larger blocks would hide it). Rows of 1, 7 and 77 with 81 or 80
blocks (Q4_0 1458-byte rows, Q8_0 2754, Q6_K 2100: allocations ending 2 mod 4 or 4 mod 16; the one-block types also
at 80 blocks, where the paired readers take two blocks up to the row's last byte) at K splits of 1, 3, 8 and 16
(slices starting inside a super-block), N = 1, 3 and 17 (the dp4a and mma entries). Every tile's output is also
compared bitwise with the first tile's: every decode-MMQ tile (dp4a and mma alike), and every dequant-MMA tile of the
same kind (its shared-memory and direct tiles assign values to mma slots differently), and every packed-MMA tile, with
both ways of adding K slices (counters; a cluster's shared memory up to 8 slices), and the 8-slice split walked by 4
and 2 blocks of two and four K chunks, with dequant-MMA's shared-memory tile (the same bits by construction). Exit status 1 on a difference.

    python -m gemma_oracle.harness.perf.mmq_memcheck [--routes packed-MMA ...]   (default: all three)
"""
from __future__ import annotations

import sys


ROUTES = ("decode-MMQ", "dequant-MMA", "packed-MMA")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.mmq_memcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES),
                   help="the routes whose tiles run (a kernel change needs only its own route's)")
    chosen = set(p.parse_args(argv).routes)
    import cupy as cp
    import numpy as np

    from gemma_oracle.kernels.dq_mma import TILES as DQ_TILES, dq_mma_matvec
    from gemma_oracle.kernels.f16_rows import f16_rows
    from gemma_oracle.kernels.mmq import MMQ_TYPES, TILES, mmq_matvec
    from gemma_oracle.kernels.packed_mma import (PACKED_TYPES, SUMS, TILES as PK_TILES, pack_weights,
                                                 packed_mma_matvec, packed_x)
    from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1

    from gemma_oracle.harness.fixtures.fast_blocks import random_blocks

    cp.cuda.set_allocator(None)  # exact cudaMalloc sizes: memcheck sees the true end of each matrix
    failures, launches = 0, 0
    # 81 blocks a row (odd) and 80 (even: the paired staging and the paired dp4a entries read two blocks at once,
    # up to the row's last byte) for the one-block types
    shapes = [(t, c) for t in MMQ_TYPES for c in ((2560,) if t.endswith("_K") else (2592, 2560))]
    for type_name, cols in shapes:
        for rows in (1, 7, 77):
            w = cp.asarray(random_blocks(type_name, rows, cols, 1 / np.sqrt(cols), np.random.default_rng(rows)))
            packed = pack_weights(w, type_name, cols) if type_name in PACKED_TYPES and cols % 64 == 0 else None
            for n in (1, 3, 17):
                x = cp.asarray(np.random.default_rng(n).standard_normal((n, cols)), dtype=cp.float32)
                xq, x16 = quantize_q8_1(x), f16_rows(x)
                xf = packed_x(x) if packed is not None else None
                for slices in (1, 3, 8, 16):  # 3 and 8: cluster sums (packed MMA), 16: counted
                    routes = [
                        ("decode-MMQ", TILES, lambda tile: mmq_matvec(w, type_name, cols, xq, tile=tile, slices=slices)),
                        ("dequant-MMA", DQ_TILES, lambda tile: dq_mma_matvec(w, type_name, cols, x16, tile=tile,
                                                                             slices=slices))]
                    if packed is not None:  # compared with dequant-MMA's shared-memory tile: the same bits; each
                        # tile with both K-slice sums (name@sums: counters, and a cluster's shared memory)
                        # the 8-slice split also walked by 4 and 2 blocks of whole K chunks (name@sums@blocks:
                        # the batch-invariant walk from 16 tokens, kernels/packed_mma.py packed_split)
                        walks = (slices,) + ((4, 2) if slices == 8 else ())
                        pk = {f"{t}@{sums}@{b}": PK_TILES[t] for t in PK_TILES for sums in SUMS for b in walks}
                        routes.append(("packed-MMA", {"w4_m1_bn8_kb4_pf0": DQ_TILES["w4_m1_bn8_kb4_pf0"], **pk},
                                       lambda tile: (dq_mma_matvec(w, type_name, cols, x16, tile=tile, slices=slices)
                                                     if tile in DQ_TILES else
                                                     packed_mma_matvec(packed, xf, tile=tile.split("@")[0],
                                                                       chunks=slices, slices=int(tile.split("@")[2]),
                                                                       sums=tile.split("@")[1]))))
                    for route, tiles, run in routes:
                        if route not in chosen:
                            continue
                        first = {}  # per tile kind: dequant-MMA's two kinds assign values to mma slots differently
                        for tile in tiles:
                            y = cp.asnumpy(run(tile)).view(np.uint32)
                            launches += 1
                            kind = tiles[tile].kind if route == "dequant-MMA" else ""  # MMQ's dp4a = its mma tiles
                            first.setdefault(kind, (tile, y))
                            if not np.array_equal(first[kind][1], y):
                                failures += 1
                                print(f"DIFF {route} {type_name} {rows}x{cols} N={n} slices={slices}: {tile} vs "
                                      f"{first[kind][0]}", flush=True)
            del w, packed
    cp.cuda.runtime.deviceSynchronize()
    print(f"{', '.join(r for r in ROUTES if r in chosen)}: {launches} launches on exactly sized weights, {failures} differ "
          f"from the first tile's bits")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
