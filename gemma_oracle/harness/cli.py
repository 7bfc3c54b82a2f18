"""The `gemma-oracle` command line: thin; every subcommand calls into the packages."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# See gemma_oracle/harness/pytest_plugin: single-threaded BLAS is faster for the reference engine's small matmuls.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _cmd_fixtures_build(args) -> int:
    from gemma_oracle.harness.fixtures.cache import fixture_names, fixture_path, fixture_variants
    from gemma_oracle.harness.fixtures.synthetic import write_fixture
    from gemma_oracle.harness.fixtures.presets import PRESETS
    from gemma_oracle.harness.fixtures.standin import STANDINS, write_standin

    names = sorted(PRESETS) if args.all else args.presets
    if not names:
        print("name at least one preset (or --all: every mini preset); presets: " + ", ".join(fixture_names()),
              file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in fixture_names()]
    if unknown:
        print(f"unknown preset(s) {unknown}; expected some of: {', '.join(fixture_names())}", file=sys.stderr)
        return 2
    for name in names:
        variants = fixture_variants(name) if args.variant == ["all"] else args.variant
        bad = [v for v in variants if v not in fixture_variants(name)]
        if bad:
            print(f"{name}: no variant(s) {bad}; it is built in {list(fixture_variants(name))}", file=sys.stderr)
            return 2
        for variant in variants:
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                target = out / f"{name}-{variant}-s{args.seed}.gguf"
                tmp = target.with_name(target.name + f".tmp{os.getpid()}")
                try:  # nothing half-written at the final name
                    if name in STANDINS:
                        write_standin(tmp, name, args.seed)
                    else:
                        write_fixture(tmp, name, variant, args.seed)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                path = target
            else:
                path = fixture_path(name, variant, args.seed)
            print(f"{name:18s} {variant:7s} {path.stat().st_size / 1e6:8.2f} MB  {path}")
    return 0


def _cmd_fixtures_presets(args) -> int:
    from gemma_oracle.harness.fixtures.presets import PRESETS
    from gemma_oracle.harness.fixtures.standin import STANDINS

    for name, p in sorted(PRESETS.items()):
        print(f"{name:18s} {p.description}")
    for name, s in sorted(STANDINS.items()):
        print(f"{name:18s} [synthetic 12B stand-in, {s.variant} only] {s.description}")
    return 0


def _real_options(args):
    from gemma_oracle.harness.real.files import Options

    return Options(revision=getattr(args, "revision", None), cache_dir=getattr(args, "cache_dir", None),
                   local_dir=getattr(args, "local_dir", None), progress=not getattr(args, "no_progress", False))


def _cmd_fixtures_list(args) -> int:
    from gemma_oracle.engine.errors import GemmaOracleError

    from gemma_oracle.harness.real.catalog import catalog
    from gemma_oracle.harness.real.files import status

    try:
        rows = [status(e, _real_options(args)) for e in catalog().values()]
    except GemmaOracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'name':15s} {'source':9s} {'present':7s} {'size':>10s} {'verified':8s} path / how to get it")
    for r in rows:
        size = f"{r.size / 1e6:.1f} MB" if r.size is not None else "-"
        where = f"{r.path}" + (f"  ({r.note})" if r.note else "") if r.path else r.note
        print(f"{r.name:15s} {r.source:9s} {'yes' if r.present else 'no':7s} {size:>10s} "
              f"{('yes' if r.verified else 'no') if r.present else '-':8s} {where}")
    return 0


def _cmd_fixtures_path(args) -> int:
    from gemma_oracle.engine.errors import GemmaOracleError

    from gemma_oracle.harness.real.catalog import get
    from gemma_oracle.harness.real.files import local_path

    try:
        path, verified = local_path(get(args.name), _real_options(args))
    except GemmaOracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not verified:
        print(f"warning: {args.name}: {path} is not verified (no pinned or recorded sha256)", file=sys.stderr)
    print(path)
    return 0


def _cmd_fixtures_download(args) -> int:
    from gemma_oracle.engine.errors import GemmaOracleError

    from gemma_oracle.harness.real.catalog import get
    from gemma_oracle.harness.real.files import fetch

    failed = 0
    for name in args.names:
        try:
            path = fetch(get(name), _real_options(args))
        except GemmaOracleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {path}")
    return 1 if failed else 0


def _cmd_fixtures_verify(args) -> int:
    from gemma_oracle.engine.errors import GemmaOracleError

    from gemma_oracle.harness.real.catalog import catalog, get
    from gemma_oracle.harness.real.files import check

    wrong = []
    try:
        entries = [get(name) for name in args.names] if args.names else list(catalog().values())
        for entry in entries:
            for c in check(entry, _real_options(args)):
                line = {"ok": f"ok  {c.path}  sha256 {c.got} ({c.against})",
                        "mismatch": f"MISMATCH  {c.path}  has sha256 {c.got}, expected {c.expected} ({c.against}); "
                                    f"no longer trusted: {c.note}",
                        "unverifiable": f"UNVERIFIABLE  {c.path}: {c.note}",
                        "absent": f"not present ({c.note})",
                        "not checked": f"not checked ({c.note})"}[c.state]
                print(f"{c.name}: {line}", flush=True)
                if c.wrong or (args.names and c.state == "absent"):
                    wrong.append(c.name)
    except GemmaOracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if wrong:
        print(f"error: fixtures verify: {', '.join(dict.fromkeys(wrong))} not verified (see above)", file=sys.stderr)
        return 1
    return 0


def _cmd_inspect(args) -> int:
    from collections import Counter

    from gemma_oracle.engine.errors import GemmaOracleError
    from gemma_oracle.engine.model_file import load_model

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
    """The synthetic golden oracle suite alone, summarised (the nightly runs it with everything else)."""
    import time

    from gemma_oracle.harness.suites.synthetic import N_LIST, cases, run_case
    from gemma_oracle.engine.factory import resolve_backend

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


def _resolved_backend(choice: str) -> str | None:
    from gemma_oracle.engine.factory import resolve_backend

    backend, reason = resolve_backend(choice)
    if backend is None:
        print(f"error: {reason}", file=sys.stderr)
    return backend


def _show_progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _print_tables(run) -> None:
    from gemma_oracle.reports import tables
    from gemma_oracle.reports.render import markdown_table

    overview = tables.correctness_overview(tables.correctness_summary(run["oracle"]))
    if not overview.empty:
        print("\ncorrectness (golden oracle, batched vs single-user):\n" + markdown_table(overview))
    perf = tables.perf_summary(run["bench"])
    if not perf.empty:
        cols = ["model", "route", "n", "tokens_per_s", "per_seq_tokens_per_s", "step_ms", "spread_pct",
                "weight_bytes", "kv_bytes", "roofline_pct", "routes"]
        print(f"\nbench on {perf['device'].iloc[0]} ({perf['timing'].iloc[0]}, streaming read "
              f"{run['bench']['read_gb_s'].iloc[0]:.1f} GB/s):\n" + markdown_table(perf[cols]))


def _print_outcome(outcome) -> None:
    from gemma_oracle.reports.render import REPORT_HTML, REPORT_MD

    _print_tables(outcome.run)
    shown = [f for f in outcome.findings if f.gated] or outcome.findings
    if shown:
        print("\nfindings:")
        for f in shown[:20]:
            print(f"  - {f.message}")
        if len(shown) > 20:
            print(f"  ... and {len(shown) - 20} more (findings.json)")
    prev = f"compared with {outcome.previous.run_id}" if outcome.previous else "no earlier run to compare with"
    verdict = "FAIL" if outcome.exit_code else "PASS"
    print(f"\n{verdict}: {outcome.run.meta.kind} {outcome.run.run_id}, {prev}")
    print(f"report: {outcome.run_dir / REPORT_MD}\n        {outcome.run_dir / REPORT_HTML}\n"
          f"data:   {outcome.run_dir}/*.parquet, meta.json")


def _cmd_nightly(args) -> int:
    """The main job: every suite that can run here, the bench, the report, the comparison."""
    from dataclasses import replace

    from gemma_oracle.harness.gpu_pinning import GpuSelectionError, pin, select_gpus
    from gemma_oracle.harness.nightly import PLANS, run_nightly

    if args.gpus is not None:  # before anything touches CUDA. The nightly is one process: it runs on the first
        try:                   # listed GPU; spreading its suites over GPUs is pytest's job (-n, --gpus)
            gpus = select_gpus(args.gpus)
        except GpuSelectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if gpus:
            pin(gpus[0])
            print(f"nightly: pinned to GPU {gpus[0].index}" + (f" (of {len(gpus)} listed; the nightly uses one)"
                                                                if len(gpus) > 1 else ""), flush=True)
    backend = _resolved_backend(args.backend)
    if backend is None:
        return 2
    plan = PLANS[backend]
    if args.skip:
        plan = replace(plan, parts=tuple(p for p in plan.parts if p not in args.skip))
    print(f"nightly: backend {backend}, parts {', '.join(plan.parts)}; writing under {args.root}", flush=True)
    outcome = run_nightly(plan, Path(args.root), progress=_show_progress(args))
    _print_outcome(outcome)
    return outcome.exit_code


def _cmd_report(args) -> int:
    from gemma_oracle.engine.errors import GemmaOracleError

    from gemma_oracle.harness.nightly import previous_run, report_run

    run_dir = Path(args.run_dir)
    try:
        previous = Path(args.previous) if args.previous else previous_run(run_dir.parent, run_dir)
        outcome = report_run(run_dir, previous)
    except GemmaOracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_outcome(outcome)
    return outcome.exit_code


def _cmd_bench(args) -> int:
    import time
    from dataclasses import replace

    from gemma_oracle.harness.gpu_pinning import GpuSelectionError, pin, select_gpus

    if args.gpus is not None:  # before anything touches CUDA: pinning must come first
        try:
            gpus = select_gpus(args.gpus)
        except GpuSelectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if len(gpus) > 1:
            from gemma_oracle.harness.perf.multi_gpu import bench_on_gpus

            from gemma_oracle.harness.nightly import PLANS

            return bench_on_gpus(args.argv, args.model or list(PLANS["cupy"].bench.models), gpus, args.out)
        if gpus:
            pin(gpus[0])

    from gemma_oracle.engine.errors import GemmaOracleError
    from gemma_oracle.reports.run_meta import collect_meta, utc_now
    from gemma_oracle.reports.store import RunWriter, create_run_dir

    from gemma_oracle.harness.perf.bench import run_bench
    from gemma_oracle.harness.nightly import PLANS, previous_run, report_run

    backend = _resolved_backend(args.backend)
    if backend is None:
        return 2
    overrides = {"models": args.model, "variant": args.variant, "n_list": args.n, "route_modes": args.route,
                 "context": args.context, "prompt_lens": args.prompt_len, "warmup": args.warmup, "steps": args.steps,
                 "repeats": args.repeats, "kv_dtype": args.kv_dtype, "use_graphs": False if args.eager else None,
                 "profile": False if args.no_profile else None}
    started, t0 = utc_now(), time.monotonic()
    try:
        cfg = replace(PLANS[backend].bench, **{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in overrides.items() if v is not None})
        result = run_bench(cfg, backend, progress=_show_progress(args),
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except GemmaOracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = Path(args.out)
    run_dir = create_run_dir(root, f"bench-{started:%Y-%m-%d-%H%M%S}")
    writer = RunWriter(run_dir)
    writer.write_table("bench", result.rows)
    writer.write_table("op_profile", result.op_profile)
    writer.write_table("routes", result.routes)
    writer.write_meta(collect_meta(run_dir.name, "bench", backend, created=started, duration_s=time.monotonic() - t0))
    outcome = report_run(run_dir, previous_run(root, run_dir))
    _print_outcome(outcome)
    return 0  # the bench reports; only the nightly gates


def build_parser() -> argparse.ArgumentParser:
    from gemma_oracle import __version__

    p = argparse.ArgumentParser(prog="gemma-oracle", description=__doc__)
    p.add_argument("--version", action="version", version=f"gemma-oracle {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    fx = sub.add_parser("fixtures", help="synthetic and real model fixtures").add_subparsers(dest="fixtures_command", required=True)
    b = fx.add_parser("build", help="write synthetic Gemma 4 GGUF fixtures (cached under $GEMMA_ORACLE_CACHE)")
    b.add_argument("presets", nargs="*", help="preset names (see `gemma-oracle fixtures presets`)")
    b.add_argument("--all", action="store_true", help="every mini preset (stand-ins are built by name: shape12b ...)")
    b.add_argument("--variant", nargs="+", default=["all"],
                   help="f32 q8_0 q4_0 q4_k_m, or all (default: every variant the preset is built in)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", help="write to this directory instead of the cache")
    b.set_defaults(func=_cmd_fixtures_build)
    ps = fx.add_parser("presets", help="list the synthetic presets")
    ps.set_defaults(func=_cmd_fixtures_presets)
    ls = fx.add_parser("list", help="real-model fixtures of the catalog: present, size, verified, path")
    ls.add_argument("--cache-dir", help="huggingface_hub cache to look in (default: HF_HOME/hub)")
    ls.set_defaults(func=_cmd_fixtures_list)
    pa = fx.add_parser("path", help="print the verified local path of a real-model fixture (no network)")
    pa.add_argument("name", help="catalog name (see `gemma-oracle fixtures list`)")
    pa.add_argument("--revision", help="Hub revision (default: the catalog's)")
    pa.add_argument("--cache-dir", help="huggingface_hub cache (default: HF_HOME/hub)")
    pa.add_argument("--local-dir", help="a directory given to `fixtures download --local-dir`")
    pa.set_defaults(func=_cmd_fixtures_path)
    dl = fx.add_parser("download", help="fetch real-model fixtures (resumable, sha256-verified, locked); "
                                        "GEMMA_ORACLE_MODEL_<NAME> points at a copy you already have")
    dl.add_argument("names", nargs="+", help="catalog names (see `gemma-oracle fixtures list`)")
    dl.add_argument("--revision", help="Hub branch, tag or commit (default: the catalog's)")
    dl.add_argument("--cache-dir", help="huggingface_hub cache (default: HF_HOME/hub)")
    dl.add_argument("--local-dir", help="write a plain file into this directory instead of the cache")
    dl.add_argument("--no-progress", action="store_true", help="no progress bars")
    dl.set_defaults(func=_cmd_fixtures_download)
    vf = fx.add_parser("verify", help="hash the local copies of real-model fixtures again, whatever their verification "
                                      "records say (no network); a copy that differs is no longer trusted")
    vf.add_argument("names", nargs="*", help="catalog names (default: every catalog entry)")
    vf.add_argument("--revision", help="Hub revision (default: the catalog's)")
    vf.add_argument("--cache-dir", help="huggingface_hub cache (default: HF_HOME/hub)")
    vf.add_argument("--local-dir", help="a directory given to `fixtures download --local-dir`")
    vf.add_argument("--no-progress", action="store_true", help="no progress bars")
    vf.set_defaults(func=_cmd_fixtures_verify)

    o = sub.add_parser("oracle", help="run the synthetic golden oracle suite (batched vs single-user) and print a summary")
    o.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="auto")
    o.add_argument("--presets", nargs="+", help="default: every preset")
    o.add_argument("--variants", nargs="+", help="default: f32 q8_0 q4_0 q4_k_m")
    o.add_argument("--n", nargs="+", type=int, help="batch sizes (default 1 2 3 4 5 6 8 9 16 17)")
    o.set_defaults(func=_cmd_oracle)

    nt = sub.add_parser("nightly", help="the main job: synthetic + real suites and the bench, a report under "
                                         "reports/nightly/<id>/, compared with the previous nightly")
    nt.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="auto")
    nt.add_argument("--root", default="reports/nightly", help="where nightly runs are kept (default reports/nightly)")
    nt.add_argument("--skip", nargs="+", choices=("synthetic", "real", "bench"), help="leave parts out")
    nt.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr on a terminal)")
    nt.add_argument("--gpus", help="GPU indices such as 0,2, or 'all': the nightly runs on the first of them "
                                   "(the host's index is recorded in every result row)")
    nt.set_defaults(func=_cmd_nightly)

    rp = sub.add_parser("report", help="re-render a stored run's report (report.md, report.html, findings.json)")
    rp.add_argument("run_dir", help="a run directory, e.g. reports/nightly/2026-11-25-031500")
    rp.add_argument("--previous", help="compare with this run (default: the run before it in the same folder)")
    rp.set_defaults(func=_cmd_report)

    bn = sub.add_parser("bench", help="decode t/s per model x route mode x N beside the roofline, per-op profile and "
                                      "route table; stored under reports/runs/bench-<time>/ with a report")
    bn.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="auto",
                    help="cupy (GPU, CUDA events over graph replays) or numpy (host clock); auto: cupy when usable")
    bn.add_argument("--model", nargs="+", help="preset names, real-suite names (gemma3-270m) or GGUF paths "
                                               "(default: the nightly's bench models for the backend)")
    bn.add_argument("--variant", help="quant variant for presets (default q4_k_m)")
    bn.add_argument("--n", nargs="+", type=int, help="batch sizes")
    bn.add_argument("--route", nargs="+", choices=("auto", "batch-invariant", "ws", "gemm_n", "decode_mmq"),
                    help="matmul route modes to compare (GPU only; gemma_oracle.engine.routing)")
    bn.add_argument("--context", type=int, help="KV positions per sequence")
    bn.add_argument("--prompt-len", nargs="+", type=int, help="prompt lengths, cycled over the sequences")
    bn.add_argument("--warmup", type=int)
    bn.add_argument("--steps", type=int, help="decode steps per timed run")
    bn.add_argument("--repeats", type=int, help="timed runs per N (the median is reported)")
    bn.add_argument("--kv-dtype", choices=("float16", "float32"))
    bn.add_argument("--eager", action="store_true", help="GPU: time the uncaptured forward instead of graph replays")
    bn.add_argument("--no-profile", action="store_true", help="skip the per-op profiling pass")
    bn.add_argument("--no-progress", action="store_true")
    bn.add_argument("--out", default="reports/runs", help="root of the run directory (default reports/runs)")
    bn.add_argument("--gpus", help="GPU indices such as 0,2, or 'all': one bench process per GPU in parallel, the "
                    "models dealt out over them, a section per GPU (gemma_oracle.harness.perf.multi_gpu); one index pins the bench")
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
