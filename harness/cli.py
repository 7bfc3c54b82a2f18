"""The `gemma-oracle` command line: thin; every subcommand calls into the packages."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# See harness/pytest_plugin.py: single-threaded BLAS is faster for the reference engine's small matmuls.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _cmd_fixtures_build(args) -> int:
    from .fixtures import fixture_path, write_fixture
    from .presets import PRESETS
    from .quant_mix import VARIANTS

    names = sorted(PRESETS) if args.all else args.presets
    if not names:
        print("name at least one preset (or --all); presets: " + ", ".join(sorted(PRESETS)), file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        print(f"unknown preset(s) {unknown}; expected some of: {', '.join(sorted(PRESETS))}", file=sys.stderr)
        return 2
    variants = list(VARIANTS) if args.variant == ["all"] else args.variant
    for name in names:
        for variant in variants:
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                path = write_fixture(out / f"{name}-{variant}-s{args.seed}.gguf", name, variant, args.seed)
            else:
                path = fixture_path(name, variant, args.seed)
            print(f"{name:18s} {variant:7s} {path.stat().st_size / 1e6:8.2f} MB  {path}")
    return 0


def _cmd_fixtures_presets(args) -> int:
    from .presets import PRESETS

    for name, p in sorted(PRESETS.items()):
        print(f"{name:18s} {p.description}")
    return 0


def _cmd_inspect(args) -> int:
    from collections import Counter

    from engine.errors import GemmaOracleError
    from engine.model_file import load_model

    try:
        m = load_model(args.path, embed_scale_mode=args.embed_scale)
    except GemmaOracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    c = m.config
    print(f"{m.path}: {c.arch}, {c.n_layers} layers, hidden {c.hidden}, {c.n_heads} heads, vocab {c.vocab_size}")
    for i in range(c.n_layers):
        kind = "sliding" if c.layer_is_sliding[i] else "global "
        extra = []
        if c.layer_k_eq_v[i]:
            extra.append("k_eq_v")
        if not c.owns_kv(i):
            extra.append(f"KV from layer {c.kv_source[i]}")
        print(f"  layer {i:2d} {kind} head_dim {c.head_dim(i):4d} kv_heads {c.n_kv_heads[i]} n_ff {c.n_ff[i]:6d} {' '.join(extra)}")
    print(f"  PLE width {c.ple_width}, softcap {c.final_softcap}, rope_freqs {c.has_rope_freqs}, embed scale {c.embed_scale!r} ({c.embed_scale_mode})")
    types = Counter(t.type_name for t in m.tensors.values())
    print("  tensor types: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items())))
    if m.ignored:
        print(f"  ignored tensors (not read by the model): {len(m.ignored)}")
    return 0


def _cmd_oracle(args) -> int:
    """The main job (until the nightly report exists): the synthetic golden oracle suite, summarised."""
    import time

    import numpy as np

    from .oracle_suite import N_LIST, cases, run_case
    from .pytest_plugin import resolve_backend

    backend, reason = resolve_backend(args.backend)
    if backend is None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    todo = cases(args.presets or None, args.variants or None, tuple(args.n) if args.n else N_LIST)
    print(f"golden oracle: batched vs single-user decode, backend {backend}, {len(todo)} cases")
    rows: dict[tuple[str, str], list] = {}
    t0 = time.time()
    for i, case in enumerate(todo, 1):
        result = run_case(case, backend)
        worst = max(c.nmse for c in result.comparisons)
        rows.setdefault((case.preset, case.variant), []).append((case.n, result.passed, worst, result))
        print(f"\r  [{i}/{len(todo)}] {case.id:32s}", end="", file=sys.stderr, flush=True)
    print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    print(f"{'preset':18s} {'variant':8s} {'N passed':>10s} {'worst NMSE':>11s} {'argmax/top5':>12s} verdict")
    failed = []
    for (preset, variant), items in rows.items():
        n_ok = sum(ok for _, ok, _, _ in items)
        worst = max(w for _, _, w, _ in items)
        agree = all(c.argmax_agree and c.topk_overlap == c.topk for *_, r in items for c in r.comparisons)
        print(f"{preset:18s} {variant:8s} {n_ok:>4d}/{len(items):<5d} {worst:11.2e} {'identical' if agree else 'DIFFER':>12s} "
              f"{'PASS' if n_ok == len(items) else 'FAIL'}")
        failed += [r for _, ok, _, r in items if not ok]
    print(f"{sum(len(v) for v in rows.values()) - len(failed)} passed, {len(failed)} failed in {time.time() - t0:.1f} s")
    for r in failed[:5]:
        print(r.summary(), file=sys.stderr)
    return 1 if failed else 0


def _cmd_bench(args) -> int:
    from .gpu_pinning import GpuSelectionError, current_gpu_index, pin, select_gpus

    if args.gpus is not None:  # before anything touches CUDA: pinning must come first
        try:
            gpus = select_gpus(args.gpus)
        except GpuSelectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if len(gpus) > 1:
            from .multi_gpu import bench_on_gpus

            return bench_on_gpus(args.argv, args.model, gpus, args.out)
        if gpus:
            pin(gpus[0])
    from .bench import bench_decode, format_table, read_bandwidth_gb_s, rows_as_dicts
    from .fixtures import fixture_path
    from .presets import PRESETS
    from .pytest_plugin import gpu_available

    if not gpu_available():
        print("error: the bench times the CuPy engine and needs an NVIDIA GPU (pip install 'gemma-oracle[gpu]')",
              file=sys.stderr)
        return 2
    import cupy as cp

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    bw = read_bandwidth_gb_s()
    all_rows = []
    for model in args.model:
        path = fixture_path(model, args.variant) if model in PRESETS else Path(model)
        all_rows += bench_decode(path, tuple(args.n), steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                                 kv_dtype=args.kv_dtype, bandwidth=bw, use_graphs=not args.eager,
                                 route_mode=args.route)
    table = format_table(all_rows, bw, device)
    print(table)
    if args.out:
        import json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(table + "\n")
        (out / "bench.json").write_text(json.dumps({"device": device, "gpu": current_gpu_index(), "read_gb_s": bw, "rows": rows_as_dicts(all_rows)}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gemma-oracle", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    fx = sub.add_parser("fixtures", help="synthetic and real model fixtures").add_subparsers(dest="fixtures_command", required=True)
    b = fx.add_parser("build", help="write synthetic Gemma 4 GGUF fixtures (cached under $GEMMA_ORACLE_CACHE)")
    b.add_argument("presets", nargs="*", help="preset names (see `gemma-oracle fixtures presets`)")
    b.add_argument("--all", action="store_true", help="every preset")
    b.add_argument("--variant", nargs="+", default=["all"], help="f32 q8_0 q4_0 q4_k_m, or all (default)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", help="write to this directory instead of the cache")
    b.set_defaults(func=_cmd_fixtures_build)
    ps = fx.add_parser("presets", help="list the synthetic presets")
    ps.set_defaults(func=_cmd_fixtures_presets)

    o = sub.add_parser("oracle", help="run the synthetic golden oracle suite (batched vs single-user) and print a summary")
    o.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="auto")
    o.add_argument("--presets", nargs="+", help="default: every preset")
    o.add_argument("--variants", nargs="+", help="default: f32 q8_0 q4_0 q4_k_m")
    o.add_argument("--n", nargs="+", type=int, help="batch sizes (default 1 2 3 4 5 6 8 9 16 17)")
    o.set_defaults(func=_cmd_oracle)

    bn = sub.add_parser("bench", help="decode tokens/s of the GPU engine beside the device's read bandwidth")
    bn.add_argument("--model", nargs="+", default=["g4-12b-mini"], help="synthetic preset names or GGUF paths")
    bn.add_argument("--variant", default="q4_k_m", help="quant variant for presets (default q4_k_m)")
    bn.add_argument("--n", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    bn.add_argument("--steps", type=int, default=32)
    bn.add_argument("--warmup", type=int, default=4)
    bn.add_argument("--repeats", type=int, default=3)
    bn.add_argument("--kv-dtype", choices=("float16", "float32"), default="float16")
    bn.add_argument("--route", choices=("auto", "batch-invariant", "ws", "gemm_n", "decode_mmq"), default=None,
                    help="matmul route mode (engine.routing; default $GEMMA_ORACLE_ROUTE or batch-invariant)")
    bn.add_argument("--eager", action="store_true", help="time the uncaptured forward instead of CUDA-graph replays")
    bn.add_argument("--out", help="directory for bench.md and bench.json")
    bn.add_argument("--gpus", help="GPU indices such as 0,2, or 'all': one bench process per GPU in parallel, the "
                    "models dealt out over them, a section per GPU (harness.multi_gpu); one index pins the bench")
    bn.set_defaults(func=_cmd_bench)

    i = sub.add_parser("inspect", help="load a GGUF through the validating loader and print its config")
    i.add_argument("path")
    i.add_argument("--embed-scale", choices=("fp32", "bf16"), default="fp32",
                   help="embedding scale sqrt(hidden) in fp32 (llama.cpp, default) or bf16-rounded (HF/JAX bf16)")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `bench --gpus` restarts itself once per GPU with these arguments
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
