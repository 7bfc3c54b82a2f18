"""Issue 23's acceptance table from one device call: our mode bench beside llama.cpp on the same GGUF files.

    python -m gemma_oracle.harness.perf.side_by_side RESULTS_DIR [--target 1.3] [--invariant-floor 0.95]

RESULTS_DIR is what `scripts/gpu-run OUT sidebyside` leaves: per model M, `mode-bench-M.json` (harness.perf.mode_bench:
aggregate decode t/s per mode and N, the streaming read measured in the same run) and `llamacpp-M-1.txt` /
`llamacpp-M-2.txt` (llama-batched-bench's table, run before and after our bench by ../shared/tools/llamacpp-cuda/bench.sh).
Prints one table per model: auto, batch-invariant and llama.cpp t/s, auto / llama.cpp (against llama.cpp's faster run:
the ratio is not flattered by a slow run of theirs), batch-invariant / auto, and both engines as a fraction of the
memory ceiling (N x read / (weights + the batch's F16 KV), harness.perf.roofline), then whether auto >= target x
llama.cpp and batch-invariant >= floor x auto at every N of --n (1 2 4 8 16 32): an N that either engine did not
finish (a mode bench cut by a time limit keeps what it finished, marked incomplete) is a "no", named as not run.
Exit status 1 when either fails, 2 on unusable input.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path


class SideBySideError(ValueError):
    """Input that cannot give the table: names the file and what was expected."""


def parse_batched_bench(text: str, source: str = "llama-batched-bench output") -> dict[int, float]:
    """{B: S_TG t/s} from llama-batched-bench's markdown table (columns found by name, not position)."""
    header, rows = None, {}
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if "B" in cells and "S_TG t/s" in cells:
                header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the |---| rule
        if len(cells) != len(header):
            raise SideBySideError(f"{source}: a row with {len(cells)} cells under a header of {len(header)}: {line!r}")
        try:
            rows[int(cells[header.index("B")])] = float(cells[header.index("S_TG t/s")])
        except ValueError:
            raise SideBySideError(f"{source}: expected an integer B and a number S_TG t/s, got {line!r}") from None
    if header is None:
        raise SideBySideError(f"{source}: no llama-batched-bench table (a header with 'B' and 'S_TG t/s')")
    return rows


@dataclass
class ModelRun:
    model: str
    device: str
    read_gb_s: float
    modes: dict[str, dict[int, float]]  # mode -> N -> aggregate decode t/s
    ceiling: dict[int, float]  # N -> memory ceiling t/s
    llama_runs: list[dict[int, float]] = field(default_factory=list)
    llama_missing: list[str] = field(default_factory=list)  # runs that printed no table, and why
    complete: bool = True  # False: the mode bench was cut before its last N


def load_model_run(results: Path, model: str) -> ModelRun:
    from gemma_oracle.harness.perf.roofline import roofline_tokens_per_s

    path = results / f"mode-bench-{model}.json"
    try:
        data = json.loads(path.read_text())
        rows = data["rows"]
        read = float(data["read_gb_s"])
    except FileNotFoundError:
        raise SideBySideError(f"{path}: missing (run the mode bench: scripts/gpu-run OUT sidebyside)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise SideBySideError(f"{path}: expected mode_bench's JSON with 'read_gb_s' and 'rows' ({e})") from None
    modes: dict[str, dict[int, float]] = {}
    ceiling: dict[int, float] = {}
    for r in rows:
        try:
            n = int(r["n"])
            modes.setdefault(r["mode"], {})[n] = float(r["tokens_per_s"])
            ceiling[n] = roofline_tokens_per_s(n, read, float(r["weight_bytes"]), float(r["kv_bytes"]))
        except KeyError as e:
            raise SideBySideError(f"{path}: a row without {e} (needs n, mode, tokens_per_s, weight_bytes, "
                                  f"kv_bytes)") from None
    run = ModelRun(model, str(data.get("device", "?")), read, modes, ceiling, complete=bool(data.get("complete", True)))
    # llamacpp-<model>-<run>.txt exactly: "shape12b-*" would also match shape12b-q4_0's runs
    runs = sorted(f for f in results.glob(f"llamacpp-{model}-*.txt") if f.stem[len(f"llamacpp-{model}-"):].isdigit())
    for path in runs:
        text = path.read_text()
        if "S_TG t/s" not in text:  # bench.sh printed why (build not ready, a failure) or was cut off: no run
            run.llama_missing.append(f"{path.name}: {text.strip().splitlines()[0] if text.strip() else 'empty'}")
            continue
        run.llama_runs.append(parse_batched_bench(text, str(path)))
    if not run.llama_runs:
        raise SideBySideError(f"{results}: no llama.cpp table for {model} (llamacpp-{model}-*.txt: "
                              f"{'; '.join(run.llama_missing) or 'none found'})")
    return run


REQUIRED_N = (1, 2, 4, 8, 16, 32)  # issue 23's table


def table(run: ModelRun, target: float, floor: float, required=REQUIRED_N) -> tuple[str, bool]:
    """The model's markdown table and whether both criteria hold at every required N (one not run is a no)."""
    for mode in ("auto", "batch-invariant"):
        if mode not in run.modes:
            raise SideBySideError(f"mode-bench-{run.model}.json: no '{mode}' rows (run the mode bench with --modes "
                                  f"auto batch-invariant)")
    auto, inv = run.modes["auto"], run.modes["batch-invariant"]
    ns = sorted(n for n in auto if n in inv and all(n in lr for lr in run.llama_runs))
    not_run = sorted(set(required) - set(ns))
    lines = [f"## {run.model} on {run.device} (streaming read {run.read_gb_s:.0f} GB/s, same call)", "",
             "| N | auto t/s | batch-invariant t/s | llama.cpp t/s (runs) | auto / llama.cpp | batch-inv / auto "
             "| ceiling t/s | auto / ceiling | llama.cpp / ceiling |",
             "|---|---|---|---|---|---|---|---|---|"]
    short, low = [], []
    for n in ns:
        runs = [lr[n] for lr in run.llama_runs]
        best = max(runs)
        ratio, inv_ratio = auto[n] / best, inv[n] / auto[n]
        if ratio < target:
            short.append(n)
        if inv_ratio < floor:
            low.append(n)
        lines.append(f"| {n} | {auto[n]:.1f} | {inv[n]:.1f} | {' / '.join(f'{v:.1f}' for v in runs)} | "
                     f"{ratio:.2f} | {inv_ratio:.3f} | {run.ceiling[n]:.0f} | {auto[n] / run.ceiling[n]:.1%} | "
                     f"{best / run.ceiling[n]:.1%} |")
    lines.append("")
    if run.llama_missing:
        lines.append("llama.cpp runs without a table: " + "; ".join(run.llama_missing))
    if not run.complete:
        lines.append(f"the mode bench was cut before its last N (mode-bench-{run.model}.json: complete false)")
    if not_run:
        lines.append(f"not run at N = {', '.join(map(str, not_run))} (by our bench, llama.cpp or both)")

    def verdict(failed: list[int]) -> str:
        if not failed and not not_run:
            return "yes"
        parts = ([f"N = {', '.join(map(str, failed))}"] if failed else []) + (
            [f"not run at N = {', '.join(map(str, not_run))}"] if not_run else [])
        return f"no ({'; '.join(parts)})"

    lines.append(f"auto >= {target} x llama.cpp (its faster run) at every N: {verdict(short)}")
    lines.append(f"batch-invariant >= {floor} x auto at every N: {verdict(low)}")
    lines += _other_modes(run, ns, auto)
    return "\n".join(lines) + "\n", not short and not low and not not_run


def _other_modes(run: ModelRun, ns: list[int], auto: dict[int, float]) -> list[str]:
    """The bench's other modes (an opt-in route table timed in the same call) beside llama.cpp and auto: what
    making one of them the auto table would give, read from the same run; not part of the acceptance."""
    others = sorted(m for m in run.modes if m not in ("auto", "batch-invariant"))
    if not others:
        return []
    lines = ["", "Other modes in the same run (not the acceptance; mode t/s, mode / llama.cpp, mode / auto):", "",
             "| mode | " + " | ".join(f"N = {n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for mode in others:
        cells = []
        for n in ns:
            tps = run.modes[mode].get(n)
            best = max(lr[n] for lr in run.llama_runs)
            cells.append("-" if tps is None else f"{tps:.1f} ({tps / best:.2f}, {tps / auto[n]:.3f})")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.side_by_side",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a results directory of scripts/gpu-run ... sidebyside")
    p.add_argument("--model", nargs="+", help="models (default: every mode-bench-<model>.json there)")
    p.add_argument("--target", type=float, default=1.3, help="auto / llama.cpp needed at every N")
    p.add_argument("--invariant-floor", type=float, default=0.95, help="batch-invariant / auto needed at every N")
    p.add_argument("--n", nargs="+", type=int, default=list(REQUIRED_N), help="the N values both criteria need")
    args = p.parse_args(argv)
    models = args.model or sorted(f.name[len("mode-bench-"):-len(".json")]
                                  for f in args.results.glob("mode-bench-*.json"))
    if not models:
        print(f"side_by_side: {args.results}: no mode-bench-<model>.json", file=sys.stderr)
        return 2
    ok = True
    try:
        for model in models:
            text, passed = table(load_model_run(args.results, model), args.target, args.invariant_floor, args.n)
            print(text)
            ok &= passed
    except SideBySideError as e:
        print(f"side_by_side: {e}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
