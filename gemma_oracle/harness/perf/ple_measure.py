"""The per-layer-embedding (PLE) matmuls' share of a decode step, and the router's kernels against cuBLAS on them.

    python -m gemma_oracle.harness.perf.ple_measure --model g4-e4b-mini --variant q4_k_m --out DIR    # DIR/ple.md

PLE adds three matmuls per step beyond a plain Gemma: per_layer_model_proj (hidden -> layers x PLE width, BF16
in real files), and per layer inp_gate (hidden -> width) and proj (width -> hidden). For each N this times
(CUDA events, median of repeats, inside one captured graph per variant so launch gaps match a decode step):
  * the whole decode step of the engine (graph replay, no host read-back),
  * the PLE matmuls alone as the router serves them (the engine's own routes at that N),
  * the same products through cuBLAS (cupy.matmul on float32 weights dequantized once at load),
and reports the PLE share of the step and which of the two is faster: uncaptured head to head, and for the engine,
where the router's kernels run inside the step's graph and cuBLAS could only run outside it (the column "engine
keeps": the router when its in-graph time is at most cuBLAS's uncaptured time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def measure(path, n_list=(1, 2, 4, 8, 16, 32), route_mode: str | None = None) -> list[dict]:
    import cupy as cp
    import numpy as np

    from gemma_oracle.engine.gpu_engine import CupyEngine
    from gemma_oracle.kernels.dequant import dequantize

    from gemma_oracle.harness.perf.gpu_timing import graph_time_ms

    engine = CupyEngine(path, kv_dtype="float16", max_sequences=max(n_list) + 1, route_mode=route_mode)
    cfg = engine.config
    if not cfg.ple_width:
        raise ValueError(f"{path}: the model has no per-layer embeddings (PLE width 0)")
    names = ["per_layer_model_proj.weight"] + [f"blk.{i}.{t}.weight" for i in range(cfg.n_layers)
                                              for t in ("inp_gate", "proj")]
    dense = {n: dequantize(engine.w[n].raw, engine.w[n].type_name, engine.w[n].n_cols) for n in names}  # float32
    rows = []
    for n in n_list:
        seqs = [engine.new_sequence() for _ in range(n)]
        for s in seqs:
            engine.prefill(s, [2, 5, 9])
        engine.decode(seqs, [7] * n)  # captures the step graph for N
        g = engine._graphs[n]
        step_ms = graph_time_ms(lambda i: g.graph.launch(engine.stream), capture=False, stream=engine.stream)[0]
        inputs = {nm: cp.asarray(np.random.default_rng(1).standard_normal((n, engine.w[nm].n_cols)).astype(np.float32))
                  for nm in names}
        routes = {nm: engine.route(nm, n) for nm in names}
        # the router's kernels inside a captured graph (as in the step); cuBLAS cannot be captured by CuPy, so the
        # head-to-head is also timed uncaptured for both (each then pays its Python launch cost)
        router_ms = graph_time_ms(lambda i: [engine._matvec(nm, inputs[nm]) for nm in names])[0]
        router_eager_ms = graph_time_ms(lambda i: [engine._matvec(nm, inputs[nm]) for nm in names], capture=False)[0]
        cublas_ms = graph_time_ms(lambda i: [cp.matmul(inputs[nm], dense[nm].T) for nm in names], capture=False)[0]
        rows.append(dict(n=n, step_ms=step_ms, ple_router_ms=router_ms, ple_router_eager_ms=router_eager_ms,
                         ple_cublas_ms=cublas_ms, ple_share=router_ms / step_ms,
                         routes=" ".join(sorted(set(routes.values())))))
        del seqs
    return rows


def format_table(rows: list[dict], title: str) -> str:
    lines = [f"# PLE matmuls: {title}", "",
             "| N | decode step ms | PLE via router ms (in a graph) | share of step | router, uncaptured ms | "
             "cuBLAS, uncaptured ms | faster uncaptured | engine keeps |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        faster = "router" if r["ple_router_eager_ms"] <= r["ple_cublas_ms"] else "cuBLAS"
        keeps = "router" if r["ple_router_ms"] <= r["ple_cublas_ms"] else "cuBLAS"
        lines.append(f"| {r['n']} | {r['step_ms']:.3f} | {r['ple_router_ms']:.3f} ({r['routes']}) | "
                     f"{100 * r['ple_share']:.1f} % | {r['ple_router_eager_ms']:.3f} | {r['ple_cublas_ms']:.3f} | "
                     f"{faster} | {keeps} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.ple_measure", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="g4-e4b-mini")
    p.add_argument("--variant", default="q4_k_m")
    p.add_argument("--n", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--route", default=None)
    p.add_argument("--out")
    args = p.parse_args(argv)
    import cupy as cp

    from gemma_oracle.harness.fixtures.cache import fixture_path

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows = measure(fixture_path(args.model, args.variant), tuple(args.n), args.route)
    text = format_table(rows, f"{args.model} {args.variant} on {device}, route mode {args.route or 'default'}")
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ple.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
