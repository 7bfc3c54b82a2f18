"""Targets for Nsight Compute (`ncu`): one matmul launched a few times (its hardware counters on one 12B matmul
shape), or one eager decode step of a model inside the NVTX range "step" (every kernel of the step, in order).

    ncu --clock-control none --kernel-name regex:mmq_q4_k --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        python -m gemma_oracle.harness.perf.ncu_target --type Q4_K --rows 15360 --cols 3840 --n 1 --route decode_mmq
    (--route packed_mma with --kernel-name regex:packed_mma_q: the pack and packed_x launches come first, once)
    ncu --clock-control none --cache-control none --nvtx --nvtx-include step/ --metrics gpu__time_duration.sum --csv \
        python -m gemma_oracle.harness.perf.ncu_target --step shape12b --n 1
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.ncu_target", description=__doc__.split("\n\n")[0])
    p.add_argument("--type", default="Q4_K")
    p.add_argument("--rows", type=int, default=15360)
    p.add_argument("--cols", type=int, default=3840)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--route", default="decode_mmq", choices=("decode_mmq", "ws", "gemm_n", "dq_mma", "packed_mma"))
    p.add_argument("--tile", default=None, help="the route's tile (default: its tile rules' choice)")
    p.add_argument("--slices", type=int, default=None, help="K slices of the tiled routes (default: split_k_slices)")
    p.add_argument("--launches", type=int, default=4)
    p.add_argument("--step", metavar="MODEL", help="profile one eager decode step of this model (fixture name) instead")
    p.add_argument("--route-mode", default="auto")
    args = p.parse_args(argv)
    import cupy as cp
    import numpy as np

    if args.step:
        return _step(args.step, args.n, args.route_mode)

    from gemma_oracle.kernels.dq_mma import dq_mma_matvec
    from gemma_oracle.kernels.f16_rows import f16_rows
    from gemma_oracle.kernels.matvec import matvec
    from gemma_oracle.kernels.mmq import mmq_matvec
    from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1

    from gemma_oracle.harness.fixtures.fast_blocks import random_blocks

    w = cp.asarray(random_blocks(args.type, args.rows, args.cols, 1 / np.sqrt(args.cols), np.random.default_rng(1)))
    x = cp.asarray(np.random.default_rng(2).standard_normal((args.n, args.cols)).astype(np.float32))
    xq = quantize_q8_1(x)
    x16 = f16_rows(x)
    if args.route == "packed_mma":  # the packed copy and the fragment-ordered rows, made once before the launches
        from gemma_oracle.kernels.packed_mma import pack_weights, packed_mma_matvec, packed_x

        packed, xf = pack_weights(w, args.type, args.cols), packed_x(x)
    for _ in range(args.launches):
        if args.route == "decode_mmq":
            mmq_matvec(w, args.type, args.cols, xq, tile=args.tile, slices=args.slices)
        elif args.route == "dq_mma":
            dq_mma_matvec(w, args.type, args.cols, x16, tile=args.tile, slices=args.slices)
        elif args.route == "packed_mma":
            packed_mma_matvec(packed, xf, tile=args.tile, slices=args.slices)
        else:
            matvec(w, args.type, args.cols, x, route=args.route)
    cp.cuda.get_current_stream().synchronize()
    print(f"{args.launches} launches of {args.route} {args.type} {args.rows}x{args.cols} N={args.n}", file=sys.stderr)
    return 0


def _step(model: str, n: int, route_mode: str, prompt_len: int = 128) -> int:
    """Prefill n sequences of prompt_len tokens, run one eager decode step (warm), then one inside NVTX "step"."""
    import cupy as cp
    import numpy as np
    from cupy.cuda import nvtx

    from gemma_oracle.engine.gpu_engine import CupyEngine

    from gemma_oracle.harness.fixtures.cache import fixture_path

    engine = CupyEngine(fixture_path(model), kv_dtype="float16", max_sequences=n + 1, max_context=1024,
                        prefill_chunk=prompt_len, route_mode=route_mode, use_graphs=False)
    rng = np.random.default_rng(0)
    seqs = [engine.new_sequence() for _ in range(n)]
    for s in seqs:
        engine.prefill(s, [2] + [int(t) for t in rng.integers(4, engine.vocab_size, size=prompt_len - 1)])
    engine.decode(seqs, [5] * n)
    cp.cuda.Device().synchronize()
    nvtx.RangePush("step")
    engine.decode(seqs, [6] * n)
    cp.cuda.Device().synchronize()
    nvtx.RangePop()
    print(f"one eager decode step of {model}, N={n}, mode {route_mode}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
