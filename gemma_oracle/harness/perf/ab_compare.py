"""A kernel change against its baseline, measured in one device call: `scripts/gpu-run OUT ab`.

    python -m gemma_oracle.harness.perf.ab_compare BASE_DIR NEW_DIR [--worse 1.03]

Each directory is what `scripts/gpu-run` leaves for the steps `tune` and `modes`: per model M,
`tune-M/route-tuning.parquet` (harness.perf.route_tuning: microseconds per matmul shape, route, tile, K split and N)
and `mode-bench-M.json` (harness.perf.mode_bench: whole-step t/s per mode and N). BASE_DIR was measured on the baseline
kernel sources, NEW_DIR on the changed ones, on the same machine in the same call (timings of two calls, or of an H100
and an H200, are not comparable). Prints, per model, the whole-step t/s of both and new / base per mode and N, then
the per-matmul time ratio new / base of every (shape, route, tile, K split, N) timed in both, summarised per route and
tile (geometric mean, best, worst), and lists the rows slower than --worse. Exit status 2 on unusable input, 0
otherwise: a slower change is a result, not a failure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEY = ["type", "rows", "cols", "n", "route", "tile", "slices"]


class AbCompareError(ValueError):
    """Input that cannot be compared: names the file and what was expected."""


def load_tuning(path: Path):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise AbCompareError(f"{path}: not a readable route-tuning parquet ({e})") from e
    missing = [c for c in KEY + ["us"] if c not in frame.columns]
    if missing:
        raise AbCompareError(f"{path}: route-tuning columns {missing} missing (has {list(frame.columns)})")
    return frame


def load_modes(path: Path) -> tuple[dict[tuple[str, int], float], str | None, str]:
    """({(mode, N): tokens_per_s}, device, launch) of one mode-bench JSON (the caller checks both ran on one device;
    launch is 'pdl' or 'plain', or 'not recorded' in files written before mode_bench recorded it)."""
    try:
        doc = json.loads(path.read_text())
        return ({(r["mode"], int(r["n"])): float(r["tokens_per_s"]) for r in doc["rows"]}, doc.get("device"),
                str(doc.get("launch", "not recorded")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AbCompareError(f"{path}: expected mode_bench JSON with rows of mode, n, tokens_per_s ({e})") from e


def tuning_ratios(base, new):
    """The rows timed in both, with us_base, us_new and ratio = us_new / us_base. A key timed more than once in a file
    (route tuning times the activation quantization once per matrix shape that shares it) counts once, at its median."""
    def once(frame):
        return frame.groupby(KEY, dropna=False, as_index=False)["us"].median()

    both = once(base).merge(once(new), on=KEY, suffixes=("_base", "_new"))
    both["ratio"] = both["us_new"] / both["us_base"]
    return both.sort_values(KEY).reset_index(drop=True)


def tile_summary(ratios):
    """Per (route, tile): rows compared, geometric mean, best and worst new / base."""
    import numpy as np

    g = ratios.groupby(["route", "tile"], dropna=False)["ratio"]
    out = g.agg(rows="count", best="min", worst="max").reset_index()
    out["geomean"] = g.apply(lambda r: float(np.exp(np.log(r).mean()))).values
    return out[["route", "tile", "rows", "geomean", "best", "worst"]]


def models_in(directory: Path) -> list[str]:
    names = {p.name[len("mode-bench-"):-len(".json")] for p in directory.glob("mode-bench-*.json")}
    names |= {p.parent.name[len("tune-"):] for p in directory.glob("tune-*/route-tuning.parquet")}
    return sorted(names)


def compare(base_dir: Path, new_dir: Path, worse: float = 1.03) -> str:
    for d in (base_dir, new_dir):
        if not d.is_dir():
            raise AbCompareError(f"{d}: not a directory (expected a scripts/gpu-run step directory)")
    models = [m for m in models_in(base_dir) if m in models_in(new_dir)]
    if not models:
        raise AbCompareError(f"{base_dir} and {new_dir}: no model with mode-bench-M.json or tune-M/route-tuning.parquet "
                             "in both")
    lines = [f"# A/B: {new_dir} against {base_dir}", ""]
    for model in models:
        lines += [f"## {model}", ""]
        bm, nm = base_dir / f"mode-bench-{model}.json", new_dir / f"mode-bench-{model}.json"
        if bm.exists() and nm.exists():
            (base_tps, base_dev, base_launch), (new_tps, new_dev, new_launch) = load_modes(bm), load_modes(nm)
            if base_dev != new_dev:
                raise AbCompareError(f"{nm}: measured on {new_dev!r}, {bm} on {base_dev!r}: not comparable")
            keys = sorted(set(base_tps) & set(new_tps))
            lines += [f"whole step on {new_dev}, t/s (launches: base {base_launch}, new {new_launch}):", "", "| mode | N | base | new | new / base |",
                      "|---|---|---|---|---|"]
            lines += [f"| {m} | {n} | {base_tps[m, n]:.1f} | {new_tps[m, n]:.1f} | {new_tps[m, n] / base_tps[m, n]:.3f} |"
                      for m, n in keys]
            lines.append("")
        bt, nt = base_dir / f"tune-{model}" / "route-tuning.parquet", new_dir / f"tune-{model}" / "route-tuning.parquet"
        if bt.exists() and nt.exists():
            ratios = tuning_ratios(load_tuning(bt), load_tuning(nt))
            if ratios.empty:
                lines += [f"per matmul: no (shape, route, tile, K split, N) timed in both {bt} and {nt}", ""]
                continue
            lines += [f"per matmul, us new / base ({len(ratios)} rows timed in both):", "",
                      "| route | tile | rows | geomean | best | worst |", "|---|---|---|---|---|---|"]
            for r in tile_summary(ratios).itertuples():
                lines.append(f"| {r.route} | {r.tile or '-'} | {r.rows} | {r.geomean:.3f} | {r.best:.3f} | {r.worst:.3f} |")
            slow = ratios[ratios["ratio"] > worse]
            lines += ["", f"rows slower than {worse}x: {len(slow)}"]
            lines += [f"- {r.type} {r.rows} x {r.cols} N = {r.n} {r.route} {r.tile or '-'} ({r.slices} slices): "
                      f"{r.us_base:.1f} -> {r.us_new:.1f} us ({r.ratio:.3f})" for r in slow.itertuples()]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--worse", type=float, default=1.03, help="list per-matmul rows slower than this ratio")
    args = p.parse_args(argv)
    try:
        print(compare(args.base, args.new, args.worse))
    except AbCompareError as e:
        print(f"ab_compare: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
