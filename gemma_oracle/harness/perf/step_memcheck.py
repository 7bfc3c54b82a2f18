"""The decode step's launches beside the matmuls that issue 23 added, on buffers of exactly their size, for
`compute-sanitizer --tool memcheck` (scripts/gpu-run memcheck-step; the matmul tiles: mmq_memcheck.py):

- attention's fused entries (kernels/attention.py fused=True, with and without attn_output's packed records) at head
  dims 64 to 512, every heads-per-block choice, R = 1, 5 and 17 with a NaN row (a slot past the pool), a ring and a
  global pool: every output compared bitwise with the partial and merge launches (and the records with packed_x);
- the L2 ahead launch (kernels/l2_ahead.py) over ranges ending exactly at their allocation's end, one of them not a
  multiple of its 16 KB segment.

The memory pool is switched off, so each array is its own cudaMalloc and a read or write past its end is reported.
Exit status 1 on a difference.

    python -m gemma_oracle.harness.perf.step_memcheck
"""
from __future__ import annotations

import sys

# (Hq, Hkv, d, window (0: global), capacity, last position)
ATTENTION_CASES = ((16, 8, 256, 64, 71, 300), (16, 1, 512, 0, 400, 389), (8, 2, 128, 0, 130, 129),
                   (4, 2, 64, 8, 10, 41))


def main(argv=None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.step_memcheck",
                            description=__doc__.split("\n\n")[0]).parse_args(argv)
    import cupy as cp
    import numpy as np

    from gemma_oracle.kernels.attention import HEADS_PER_BLOCK_CHOICES, decode_attention
    from gemma_oracle.kernels.kv_cache import alloc_layer_kv
    from gemma_oracle.kernels.l2_ahead import SEGMENT, l2_ahead
    from gemma_oracle.kernels.packed_mma import packed_x
    from gemma_oracle.kernels.reference.packed import x_written

    cp.cuda.set_allocator(None)  # exact cudaMalloc sizes
    failures, launches = 0, 0
    for hq, hkv, d, window, cap, last in ATTENTION_CASES:
        ring = window > 0
        rng = np.random.default_rng(d + cap)
        n_seq = 4
        pool = alloc_layer_kv(n_seq, cap, hkv, d, ring=ring, dtype="float16")
        pool.k[...] = cp.asarray(rng.standard_normal(pool.k.shape), dtype=cp.float16)
        pool.v[...] = cp.asarray(rng.standard_normal(pool.v.shape), dtype=cp.float16)
        slots = np.arange(cap)
        held = last - ((last - slots) % cap) if ring else np.where(slots <= last, slots, -1)
        pool.pos[...] = cp.asarray(np.tile(np.where(held >= 0, held, -1), (n_seq, 1)).astype(np.int32))
        for rows in (1, 5, 17):
            q = cp.asarray(rng.standard_normal((rows, hq, d)) * (2 / np.sqrt(d)), dtype=cp.float32)
            seq = np.arange(rows, dtype=np.int32) % n_seq
            pos = np.full(rows, last, np.int32) - (np.arange(rows, dtype=np.int32) % 3)
            if rows > 1:
                seq[-1] = n_seq + 3  # past the pool: a NaN row
            seq_d, pos_d = cp.asarray(seq), cp.asarray(pos)
            for hpb in [h for h in HEADS_PER_BLOCK_CHOICES if (hq // hkv) % h == 0]:
                def run(fused, packed):
                    return decode_attention(q, pool.k, pool.v, pool.pos, seq_d, pos_d, window=window, ring=ring,
                                            scale=1.0, max_position=last, heads_per_block_override=hpb, fused=fused,
                                            packed=packed)
                want = cp.asnumpy(run(False, False)).view(np.uint32)
                got = cp.asnumpy(run(True, False)).view(np.uint32)
                out, (xf, inv) = run(True, True)
                want_xf, want_inv = packed_x(out.reshape(rows, hq * d))
                live = x_written(rows, hq * d)
                launches += 4
                same = (np.array_equal(got, want) and np.array_equal(cp.asnumpy(out).view(np.uint32), want)
                        and np.array_equal(cp.asnumpy(xf)[live], cp.asnumpy(want_xf)[live])
                        and np.array_equal(cp.asnumpy(inv).view(np.uint32), cp.asnumpy(want_inv).view(np.uint32)))
                if not same:
                    failures += 1
                    print(f"attention hq {hq} hkv {hkv} d {d} window {window} rows {rows} hpb {hpb}: the fused "
                          "launch's bits differ", flush=True)
    # the L2 ahead launch: three ranges, each ending at its allocation's last byte
    arrays = [cp.zeros(SEGMENT * 3 + 48, dtype=cp.uint8), cp.zeros(SEGMENT, dtype=cp.uint8),
              cp.zeros(16 * 129 * 1024 + 16, dtype=cp.uint8)]
    for counts in ([a.nbytes for a in arrays], [arrays[0].nbytes, 0, 16]):
        l2_ahead(arrays, counts)
        launches += 1
    cp.cuda.Device().synchronize()
    print(f"step kernels: {launches} launches on exactly sized buffers, {failures} differ from the two-launch bits",
          flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
