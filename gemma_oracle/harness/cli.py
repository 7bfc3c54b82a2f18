"""The `gemma-oracle` command line: thin; every subcommand calls into the packages."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from gemma_oracle.engine.errors import GemmaOracleError

# See gemma_oracle/harness/pytest_plugin: single-threaded BLAS is faster for the reference engine's small matmuls.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

PROG = "gemma-oracle"
# Exit codes, the same in every subcommand (also in --help and README "The command line: flags, errors, exit codes")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit codes (every subcommand):
  {EXIT_OK}    done; every check passed
  {EXIT_FAILED}    the work ran and something failed: a check, a regression, a download, a file that does not
       validate, a write after the work (the results are kept elsewhere and the line says where)
  {EXIT_USAGE}    bad input, refused before any work: an unknown option or name, a value out of range, an output
       path that is not a writable directory, no usable backend
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); an unfinished run directory is removed, never left for a later run to trust
every error is one line on stderr: "{PROG}: error: ..." """


class UsageError(GemmaOracleError):
    """Bad input found before any work started (exit code 2)."""


def _error(message) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _os_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    return f"{exc.strerror or exc}" + (f": {where}" if where else "")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "gemma-oracle: error: <subcommand>: <message>", exit code 2."""

    def error(self, message):
        sub = self.prog.removeprefix(PROG).strip()
        _error((f"{sub}: " if sub else "") + f"{message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def _int_in(lo: int, hi=None, what: str = "a number"):
    """argparse type: an integer in lo..hi; ``hi`` may be a callable (read lazily, at parse time)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        top = hi() if callable(hi) else hi
        if value < lo or (top is not None and value > top):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {what} is {lo}.." + (f"{top}" if top is not None else ""))
        return value
    parse.__name__ = "integer"
    return parse


def _name_in(known, what: str):
    """argparse type: one of ``known()`` (read lazily at parse time); the error lists them."""
    def parse(text: str) -> str:
        names = known()
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; known: {', '.join(names)}")
        return text
    parse.__name__ = what
    return parse


def _path_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


def _oracle_n_max() -> int:
    from gemma_oracle.harness.suites.synthetic import MAX_N

    return MAX_N


def _bench_n_max() -> int:
    from gemma_oracle.harness.perf.bench import MAX_N

    return MAX_N


def _preset_names() -> list[str]:
    from gemma_oracle.harness.fixtures.presets import PRESETS

    return sorted(PRESETS)


def _fixture_names() -> list[str]:
    from gemma_oracle.harness.fixtures.cache import fixture_names

    return fixture_names()


def _catalog_names() -> list[str]:
    from gemma_oracle.harness.real.catalog import catalog

    return sorted(catalog())


def _variant_names() -> list[str]:
    from gemma_oracle.harness.fixtures.quant_mix import VARIANTS

    return list(VARIANTS)


def writable_dir(path: os.PathLike | str, option: str) -> Path:
    """``path`` as a directory this process can write into (created if missing), checked before any work; a
    UsageError naming ``option`` otherwise (an existing file, a read-only place, a parent that is a file)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".gemma-oracle-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {path}: not a writable directory ({exc.strerror or exc})") from None
    return p


def _check_cache() -> None:
    """The fixture cache ($GEMMA_ORACLE_CACHE) is written on first use of every fixture: check it up front."""
    from gemma_oracle.harness.fixtures.cache import cache_dir

    writable_dir(cache_dir(), "GEMMA_ORACLE_CACHE" if os.environ.get("GEMMA_ORACLE_CACHE") else "the fixture cache")


def _cmd_fixtures_build(args) -> int:
    from gemma_oracle.harness.fixtures.cache import fixture_names, fixture_path, fixture_variants
    from gemma_oracle.harness.fixtures.synthetic import write_fixture
    from gemma_oracle.harness.fixtures.presets import PRESETS
    from gemma_oracle.harness.fixtures.standin import STANDINS, write_standin

    names = sorted(PRESETS) if args.all else args.presets
    if not names:
        raise UsageError("fixtures build: name at least one preset (or --all: every mini preset); presets: "
                         + ", ".join(fixture_names()))
    plan = []
    for name in names:  # every name and variant checked before the first build
        variants = fixture_variants(name) if "all" in args.variant else args.variant
        bad = [v for v in variants if v not in fixture_variants(name)]
        if bad:
            raise UsageError(f"fixtures build: {name} has no variant {', '.join(bad)}; it is built in "
                             f"{', '.join(fixture_variants(name))}")
        plan.append((name, variants))
    out = writable_dir(args.out, "--out") if args.out else None
    if out is None:
        _check_cache()
    for name, variants in plan:
        for variant in variants:
            if out is not None:
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
    from gemma_oracle.harness.real.catalog import catalog
    from gemma_oracle.harness.real.files import status

    try:
        rows = [status(e, _real_options(args)) for e in catalog().values()]
    except GemmaOracleError as exc:
        _error(exc)
        return EXIT_FAILED
    print(f"{'name':15s} {'source':9s} {'present':7s} {'size':>10s} {'verified':8s} path / how to get it")
    for r in rows:
        size = f"{r.size / 1e6:.1f} MB" if r.size is not None else "-"
        where = f"{r.path}" + (f"  ({r.note})" if r.note else "") if r.path else r.note
        print(f"{r.name:15s} {r.source:9s} {'yes' if r.present else 'no':7s} {size:>10s} "
              f"{('yes' if r.verified else 'no') if r.present else '-':8s} {where}")
    return 0


def _cmd_fixtures_path(args) -> int:
    from gemma_oracle.harness.real.catalog import get
    from gemma_oracle.harness.real.files import local_path

    try:
        path, verified = local_path(get(args.name), _real_options(args))
    except GemmaOracleError as exc:
        _error(exc)
        return EXIT_FAILED
    if not verified:
        print(f"warning: {args.name}: {path} is not verified (no pinned or recorded sha256)", file=sys.stderr)
    print(path)
    return 0


def _cmd_fixtures_download(args) -> int:
    from gemma_oracle.harness.real.catalog import get
    from gemma_oracle.harness.real.files import fetch

    if args.local_dir:
        writable_dir(args.local_dir, "--local-dir")
    if args.cache_dir:
        writable_dir(args.cache_dir, "--cache-dir")
    failed = 0
    for name in args.names:
        try:
            path = fetch(get(name), _real_options(args))
        except GemmaOracleError as exc:
            _error(exc)
            failed += 1
            continue
        print(f"{name}: {path}")
    return 1 if failed else 0


def _cmd_fixtures_verify(args) -> int:
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
        _error(exc)
        return EXIT_FAILED
    if wrong:
        _error(f"fixtures verify: {', '.join(dict.fromkeys(wrong))} not verified (see above)")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_inspect(args) -> int:
    from collections import Counter

    from gemma_oracle.engine.model_file import load_model

    if not Path(args.path).is_file():
        raise UsageError(f"inspect {args.path}: " + ("is a directory, expected a GGUF file" if Path(args.path).is_dir()
                                                     else "no such file"))
    try:
        m = load_model(args.path, embed_scale_mode=args.embed_scale)
    except GemmaOracleError as exc:
        _error(exc)
        return EXIT_FAILED
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

    from gemma_oracle.harness.progress import Progress
    from gemma_oracle.harness.suites.synthetic import N_LIST, cases, run_case

    backend = _resolved_backend(args.backend)
    _check_cache()
    todo = cases(args.preset or None, args.variant or None, tuple(args.n) if args.n else N_LIST)
    print(f"golden oracle: batched vs single-user decode, backend {backend}, {len(todo)} cases", flush=True)
    rows: dict[tuple[str, str], list] = {}
    t0 = time.time()
    with Progress(len(todo), "oracle", not args.no_progress) as bar:
        for case in todo:
            bar.set_postfix_str(case.id)
            result = run_case(case, backend)
            worst = max(c.nmse for c in result.comparisons)
            rows.setdefault((case.preset, case.variant), []).append((case.n, result.passed, worst, result))
            bar.update()
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
    return EXIT_FAILED if failed else EXIT_OK


def _resolved_backend(choice: str) -> str:
    from gemma_oracle.engine.factory import resolve_backend

    backend, reason = resolve_backend(choice)
    if backend is None:
        raise UsageError(f"--backend {choice}: {reason}")
    return backend


def _show_progress(args) -> bool:
    """Progress on stderr unless --no-progress: a bar on a terminal, a line every few seconds elsewhere."""
    return not args.no_progress


def _print_tables(run) -> None:
    from gemma_oracle.reports import tables
    from gemma_oracle.reports.render import markdown_table

    overview = tables.correctness_overview(tables.correctness_summary(run["oracle"]))
    if not overview.empty:
        print("\ncorrectness (golden oracle, batched vs single-user):\n" + markdown_table(overview, pad=True))
    perf = tables.perf_summary(run["bench"])
    if not perf.empty:
        cols = ["model", "route", "n", "tokens_per_s", "per_seq_tokens_per_s", "step_ms", "spread_pct",
                "weight_bytes", "kv_bytes", "roofline_pct", "routes", "flags"]
        print(f"\nbench on {perf['device'].iloc[0]} ({perf['timing'].iloc[0]}, streaming read "
              f"{run['bench']['read_gb_s'].iloc[0]:.1f} GB/s):\n" + markdown_table(perf[cols], pad=True))


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
            raise UsageError(exc) from None
        if gpus:
            pin(gpus[0])
            print(f"nightly: pinned to GPU {gpus[0].index}" + (f" (of {len(gpus)} listed; the nightly uses one)"
                                                                if len(gpus) > 1 else ""), flush=True)
    backend = _resolved_backend(args.backend)
    root = writable_dir(args.out, "--out")
    _check_cache()
    plan = PLANS[backend]
    if args.skip:
        plan = replace(plan, parts=tuple(p for p in plan.parts if p not in args.skip))
    print(f"nightly: backend {backend}, parts {', '.join(plan.parts)}; writing under {root}", flush=True)
    outcome = run_nightly(plan, root, progress=_show_progress(args))
    _print_outcome(outcome)
    return outcome.exit_code


def _engine_spec(text: str) -> str:
    """argparse type: an --engine spec whose name and options the registry accepts (checked before any work)."""
    from gemma_oracle.engine.registry import EngineSpecError, check_spec

    try:
        check_spec(text)
    except EngineSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--engine {text}: ")) from None
    return text


def _check_test_names() -> list[str]:
    from gemma_oracle.harness.suites.check import TESTS

    return list(TESTS)


def _cmd_check(args) -> int:
    """Any engine through the oracle: one verdict class per engine x fixture x test x N, stored as a run."""
    from gemma_oracle.engine.registry import unavailable_reason
    from gemma_oracle.harness.nightly import previous_run, report_run
    from gemma_oracle.harness.suites.check import DEFAULT_FIXTURES, DEFAULT_N, CheckPlan, resolve_fixture, run_check, \
        verdict_lines, write_check_run
    from gemma_oracle.reports.run_meta import utc_now

    for spec in args.engine:
        reason = unavailable_reason(spec)
        if reason:
            raise UsageError(f"--engine {spec}: cannot run here: {reason}")
    root = writable_dir(args.out, "--out")
    fixtures = tuple(args.fixtures or DEFAULT_FIXTURES)
    for name in fixtures:  # every fixture resolves (or is refused) before any engine starts
        try:
            resolve_fixture(name)
        except GemmaOracleError as exc:
            raise UsageError(f"--fixtures {name}: {exc}") from None
    plan = CheckPlan(engines=tuple(args.engine), fixtures=fixtures, n_list=tuple(args.n or DEFAULT_N),
                     tests=tuple(args.tests or ()), steps=args.steps)
    print(f"check: engines {', '.join(plan.engines)}; fixtures {', '.join(plan.fixtures)}; N {' '.join(map(str, plan.n_list))}; "
          f"writing under {root}", flush=True)
    from gemma_oracle.harness.progress import Progress

    started, t0 = utc_now(), time.monotonic()
    total = len(plan.fixtures) * len(plan.engines) * len(plan.n_list) * len(plan.tests or _check_test_names())
    with Progress(total, "check", _show_progress(args)) as bar:
        outcome = run_check(plan, progress=lambda text: (bar.set_postfix_str(text), bar.update()))
    run_dir = write_check_run(plan, outcome, root, started, time.monotonic() - t0)
    print("\nverdicts (engine x fixture x test, by N):")
    print("\n".join(verdict_lines(outcome.verdicts)))
    failed = [v for v in outcome.verdicts if not v.passed]
    for v in failed[:20]:
        print(f"  - {v.engine} {v.fixture} {v.test} N={v.n}: {v.verdict}: {v.reason}")
    result = report_run(run_dir, previous_run(root, run_dir))
    verdict = "FAIL" if failed or result.exit_code else "PASS"
    rows = sum(v.rows for v in outcome.verdicts)
    batched = sum(v.batched_rows for v in outcome.verdicts)
    print(f"\n{verdict}: {len(outcome.verdicts) - len(failed)} of {len(outcome.verdicts)} cases passed "
          f"({rows} compared rows, {batched} of them from batched steps); report: {run_dir / 'report.html'}")
    return EXIT_FAILED if failed or result.exit_code else EXIT_OK


def _cmd_engines(args) -> int:
    """Every selectable engine: name, where it comes from, whether it can run here, its options."""
    from gemma_oracle.engine.registry import EngineSpecError, engines, entry

    for name in sorted(engines()):
        try:
            e = entry(name)
        except EngineSpecError as exc:
            print(f"{name}: {exc}")
            continue
        reason = e.available()
        print(f"{name} ({e.origin}): {e.summary}" + ("" if reason is None else f" [not here: {reason}]"))
        for key, (_, text) in sorted(getattr(e.options, "items", lambda: [])()):
            print(f"    {key}: {text}")
    return EXIT_OK


def _cmd_report(args) -> int:
    from gemma_oracle.harness.nightly import previous_run, report_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"report {run_dir}: " + ("not a directory" if run_dir.exists() else "no such directory")
                         + "; expected a run directory holding meta.json and *.parquet")
    writable_dir(run_dir, "report")  # the report files are written into it
    try:
        previous = Path(args.previous) if args.previous else previous_run(run_dir.parent, run_dir)
        outcome = report_run(run_dir, previous)
    except GemmaOracleError as exc:  # not a run directory, no meta.json, a damaged table: bad input
        raise UsageError(exc) from None
    _print_outcome(outcome)
    return outcome.exit_code


def _cmd_bench(args) -> int:
    import time
    from dataclasses import replace

    from gemma_oracle.harness.gpu_pinning import GpuSelectionError, pin, select_gpus

    writable_dir(args.out, "--out")  # before any work, on one GPU or several
    if args.gpus is not None:  # before anything touches CUDA: pinning must come first
        try:
            gpus = select_gpus(args.gpus)
        except GpuSelectionError as exc:
            raise UsageError(exc) from None
        if len(gpus) > 1:
            from gemma_oracle.harness.perf.multi_gpu import bench_on_gpus

            from gemma_oracle.harness.nightly import PLANS

            return bench_on_gpus(args.argv, args.model or list(PLANS["cupy"].bench.models), gpus, args.out)
        if gpus:
            pin(gpus[0])

    from gemma_oracle.reports.run_meta import collect_meta, utc_now

    from gemma_oracle.harness import progress
    from gemma_oracle.harness.perf.bench import BenchConfigError, run_bench
    from gemma_oracle.harness.nightly import PLANS, previous_run, report_run

    backend = _resolved_backend(args.backend)
    root = writable_dir(args.out, "--out")  # before the bench: a finished bench must have somewhere to go
    _check_cache()
    overrides = {"models": args.model, "variant": args.variant, "n_list": args.n, "route_modes": args.route,
                 "context": args.context, "prompt_lens": args.prompt_len, "warmup": args.warmup, "steps": args.steps,
                 "repeats": args.repeats, "kv_dtype": args.kv_dtype, "use_graphs": False if args.eager else None,
                 "profile": False if args.no_profile else None}
    started, t0 = utc_now(), time.monotonic()
    try:
        cfg = replace(PLANS[backend].bench, **{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in overrides.items() if v is not None})
    except GemmaOracleError as exc:  # a setting that cannot work (BenchConfig names the option)
        raise UsageError(exc) from None
    try:
        result = run_bench(cfg, backend, progress=_show_progress(args), log=progress.write)
    except BenchConfigError as exc:  # an unknown model, --route on the CPU, a context the model cannot hold
        raise UsageError(exc) from None
    meta = collect_meta("", "bench", backend, created=started, duration_s=time.monotonic() - t0)
    stem = f"bench-{started:%Y-%m-%d-%H%M%S}"
    try:
        run_dir = _store_bench(root, stem, result, meta)
    except OSError as exc:  # the bench ran: keep its results somewhere and say where
        fallback = _store_bench(Path(tempfile.mkdtemp(prefix="gemma-oracle-bench-")), stem, result, meta)
        _error(f"could not write the run under {root} ({_os_message(exc)}); the results are in {fallback}")
        return EXIT_FAILED
    outcome = report_run(run_dir, previous_run(root, run_dir))
    _print_outcome(outcome)
    return EXIT_OK  # the bench reports; only the nightly gates


def _store_bench(root: Path, stem: str, result, meta) -> Path:
    """The bench's tables and meta.json (last) in a new run directory under ``root``; on a failure the partial
    directory is removed, so nothing a later run trusts is left behind."""
    import dataclasses
    import shutil

    from gemma_oracle.reports.store import RunWriter, create_run_dir

    run_dir = create_run_dir(root, stem)
    try:
        writer = RunWriter(run_dir)
        writer.write_table("bench", result.rows)
        writer.write_table("op_profile", result.op_profile)
        writer.write_table("routes", result.routes)
        writer.write_meta(dataclasses.replace(meta, run_id=run_dir.name))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


BACKENDS = ("numpy", "cupy", "auto")
BACKEND_HELP = "numpy (CPU, float64 reference) or cupy (GPU); auto (default): cupy when usable, else numpy"
NO_PROGRESS_HELP = ("no progress on stderr (default: a bar on a terminal, one line every 10 s elsewhere, "
                    "e.g. in a CI log)")
FLAGS = """
the same flags in every command: --preset (synthetic presets), --model (bench: presets, real models, GGUF paths),
--variant, --n, --out (where results go), --backend, --no-progress; the older spellings --presets, --variants and
nightly --root still work."""


def build_parser() -> argparse.ArgumentParser:
    from gemma_oracle import __version__

    p = _Parser(prog=PROG, description=__doc__, epilog=EXIT_CODES + FLAGS,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"gemma-oracle {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fx = sub.add_parser("fixtures", help="synthetic and real model fixtures").add_subparsers(dest="fixtures_command", required=True)
    b = fx.add_parser("build", help="write synthetic Gemma 4 GGUF fixtures (cached under $GEMMA_ORACLE_CACHE)")
    b.add_argument("presets", nargs="*", type=_name_in(_fixture_names, "preset"),
                   help="preset names (see `gemma-oracle fixtures presets`)")
    b.add_argument("--all", action="store_true", help="every mini preset (stand-ins are built by name: shape12b ...)")
    b.add_argument("--variant", "--variants", nargs="+", default=["all"],
                   type=_name_in(lambda: _variant_names() + ["all"], "variant"),
                   help="f32 q8_0 q4_0 q4_k_m, or all (default: every variant the preset is built in)")
    b.add_argument("--seed", type=_int_in(0, 2**32 - 1, "a seed"), default=0,
                   help="weight seed, 0..2^32-1 (default 0); part of the file name")
    b.add_argument("--out", type=_path_arg, help="write to this directory instead of the cache")
    b.set_defaults(func=_cmd_fixtures_build)
    ps = fx.add_parser("presets", help="list the synthetic presets")
    ps.set_defaults(func=_cmd_fixtures_presets)
    ls = fx.add_parser("list", help="real-model fixtures of the catalog: present, size, verified, path")
    ls.add_argument("--cache-dir", help="huggingface_hub cache to look in (default: HF_HOME/hub)")
    ls.set_defaults(func=_cmd_fixtures_list)
    pa = fx.add_parser("path", help="print the verified local path of a real-model fixture (no network)")
    pa.add_argument("name", type=_name_in(_catalog_names, "model"), help="catalog name (see `gemma-oracle fixtures list`)")
    pa.add_argument("--revision", help="Hub revision (default: the catalog's)")
    pa.add_argument("--cache-dir", help="huggingface_hub cache (default: HF_HOME/hub)")
    pa.add_argument("--local-dir", help="a directory given to `fixtures download --local-dir`")
    pa.set_defaults(func=_cmd_fixtures_path)
    dl = fx.add_parser("download", help="fetch real-model fixtures (resumable, sha256-verified, locked); "
                                        "GEMMA_ORACLE_MODEL_<NAME> points at a copy you already have")
    dl.add_argument("names", nargs="+", type=_name_in(_catalog_names, "model"),
                    help="catalog names (see `gemma-oracle fixtures list`)")
    dl.add_argument("--revision", help="Hub branch, tag or commit (default: the catalog's)")
    dl.add_argument("--cache-dir", help="huggingface_hub cache (default: HF_HOME/hub)")
    dl.add_argument("--local-dir", type=_path_arg, help="write a plain file into this directory instead of the cache")
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
    o.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    o.add_argument("--preset", "--presets", nargs="+", type=_name_in(_preset_names, "preset"),
                   help="synthetic presets (default: every preset; see `gemma-oracle fixtures presets`)")
    o.add_argument("--variant", "--variants", nargs="+", type=_name_in(_variant_names, "variant"),
                   help="quant variants (default: f32 q8_0 q4_0 q4_k_m)")
    o.add_argument("--n", nargs="+", type=_int_in(1, _oracle_n_max, "a batch size"),
                   help="batch sizes, 1..32 (default 1 2 3 4 5 6 8 9 16 17)")
    o.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    o.set_defaults(func=_cmd_oracle)

    nt = sub.add_parser("nightly", help="the main job: synthetic + real suites and the bench, a report under "
                                         "reports/nightly/<id>/, compared with the previous nightly")
    nt.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    nt.add_argument("--out", "--root", type=_path_arg, default="reports/nightly",
                    help="where nightly runs are kept (default reports/nightly)")
    nt.add_argument("--skip", nargs="+", choices=("synthetic", "real", "engines", "planted", "bench"), help="leave parts out")
    nt.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    nt.add_argument("--gpus", help="GPU indices such as 0,2, or 'all': the nightly runs on the first of them "
                                   "(the host's index is recorded in every result row)")
    nt.set_defaults(func=_cmd_nightly)

    ck = sub.add_parser("check", help="put any engine through the oracle (ours, llama.cpp, an OpenAI-compatible server, "
                                      "a peer process): the golden sweep over N and the tests from the field, one verdict "
                                      "class per engine x fixture x test x N; stored like the nightly under reports/checks/")
    ck.add_argument("--engine", action="append", required=True, type=_engine_spec, metavar="SPEC",
                    help="NAME[:key=value,...], repeatable (`gemma-oracle engines` lists names and options), e.g. "
                         "llamacpp:slots=8,kv=f32 or openai:url=http://127.0.0.1:8080")
    ck.add_argument("--fixtures", "--fixture", nargs="+", type=_path_arg, metavar="FIXTURE",
                    help="synthetic preset/variant (keqv-window24/q4_k_m), a catalog name (gemma3-270m) or a GGUF "
                         "path (default keqv-window24/f32 keqv-window24/q4_k_m g4-e2b-mini/q4_k_m)")
    ck.add_argument("--n", nargs="+", type=_int_in(1, _oracle_n_max, "a batch size"),
                    help="batch sizes, 1..32 (default 1 2 4 5 8)")
    ck.add_argument("--tests", nargs="+", type=_name_in(_check_test_names, "test"),
                    help="which tests (default: all; see gemma_oracle.harness.suites.check.TESTS)")
    ck.add_argument("--steps", type=_int_in(1, 64, "a step count"), default=4,
                    help="teacher-forced decode steps after each prompt (default 4)")
    ck.add_argument("--out", type=_path_arg, default="reports/checks", help="where check runs are kept (default "
                                                                            "reports/checks)")
    ck.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    ck.set_defaults(func=_cmd_check)

    en = sub.add_parser("engines", help="list the engines --engine can name (built-in and registered through the "
                                        "gemma_oracle.engines entry points), whether each can run here, its options")
    en.set_defaults(func=_cmd_engines)

    rp = sub.add_parser("report", help="re-render a stored run's report (report.md, report.html, findings.json)")
    rp.add_argument("run_dir", help="a run directory, e.g. reports/nightly/2026-11-25-031500")
    rp.add_argument("--previous", help="compare with this run (default: the run before it in the same folder)")
    rp.set_defaults(func=_cmd_report)

    bn = sub.add_parser("bench", help="decode t/s per model x route mode x N beside the roofline, per-op profile and "
                                      "route table; stored under reports/runs/bench-<time>/ with a report")
    bn.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="cupy (GPU, CUDA events over graph replays) or numpy (host clock); auto: cupy when usable")
    bn.add_argument("--model", nargs="+", help="preset names, real-suite names (gemma3-270m) or GGUF paths "
                                               "(default: the nightly's bench models for the backend)")
    bn.add_argument("--variant", "--variants", type=_name_in(_variant_names, "variant"),
                    help="quant variant for presets (default q4_k_m)")
    bn.add_argument("--n", nargs="+", type=_int_in(1, _bench_n_max, "a batch size"),
                    help="batch sizes, 1..256 (default: the nightly's for the backend)")
    from gemma_oracle.engine.routing import MODES as ROUTE_MODES

    bn.add_argument("--route", nargs="+", choices=ROUTE_MODES,
                    help="matmul route modes to compare (GPU only; gemma_oracle.engine.routing)")
    bn.add_argument("--context", type=_int_in(1, None, "a context"), help="KV positions per sequence")
    bn.add_argument("--prompt-len", nargs="+", type=_int_in(1, None, "a prompt length"),
                    help="prompt lengths, cycled over the sequences")
    bn.add_argument("--warmup", type=_int_in(0, None, "a warm-up step count"),
                    help="untimed decode steps before the timed runs (GPU: they capture the CUDA graph)")
    bn.add_argument("--steps", type=_int_in(1, None, "a step count"), help="decode steps per timed run")
    bn.add_argument("--repeats", type=_int_in(1, None, "a repeat count"),
                    help="timed runs per N (the median is reported)")
    bn.add_argument("--kv-dtype", choices=("float16", "float32"), help="GPU KV cache dtype (default float16)")
    bn.add_argument("--eager", action="store_true", help="GPU: time the uncaptured forward instead of graph replays")
    bn.add_argument("--no-profile", action="store_true", help="skip the per-op profiling pass")
    bn.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    bn.add_argument("--out", type=_path_arg, default="reports/runs",
                    help="root of the run directory (default reports/runs)")
    bn.add_argument("--gpus", help="GPU indices such as 0,2, or 'all': one bench process per GPU in parallel, the "
                    "models dealt out over them, a section per GPU (gemma_oracle.harness.perf.multi_gpu); one index pins the bench")
    bn.set_defaults(func=_cmd_bench)

    i = sub.add_parser("inspect", help="load a GGUF through the validating loader and print its config")
    i.add_argument("path", help="a GGUF file")
    i.add_argument("--embed-scale", choices=("fp32", "bf16"), default="fp32",
                   help="embedding scale sqrt(hidden) in fp32 (llama.cpp, default) or bf16-rounded (HF/JAX bf16)")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure ends as one "gemma-oracle: error: ..." line and an EXIT_CODES code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)  # bad arguments: one line and exit 2 (_Parser.error)
        args.argv = argv  # `bench --gpus` restarts itself once per GPU with these arguments
        return args.func(args)
    except KeyboardInterrupt:
        _error("interrupted; an unfinished run directory was removed")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except (GemmaOracleError, ValueError) as exc:
        _error(exc)
        return EXIT_FAILED
    except OSError as exc:
        _error(_os_message(exc))
        return EXIT_FAILED
    except MemoryError:
        _error("out of memory (ask for smaller batch sizes or contexts)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
