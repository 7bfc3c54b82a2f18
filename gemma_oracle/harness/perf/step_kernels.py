"""Where one decode step's GPU time goes, kernel by kernel: a table from Nsight Compute's CSV of a step
(`scripts/gpu-run OUT build profile`, which runs `harness/ncu_target.py --step` under
`ncu --metrics gpu__time_duration.sum --csv`).

    python -m gemma_oracle.harness.perf.step_kernels ncu-step-n1.csv      # markdown: kernels grouped by name, time and share
"""
from __future__ import annotations

import csv
import io
import re
import sys
from collections import defaultdict
from pathlib import Path

UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def kernel_times(text: str) -> list[tuple[str, float]]:
    """(kernel name, microseconds) per launch, in launch order, from ncu's --csv output (other lines skipped)."""
    start = text.find('"ID"')
    if start < 0:
        raise ValueError("no ncu CSV header (\"ID\", ...) in the input: was the step profiled?")
    rows = csv.DictReader(io.StringIO(text[start:]))
    out = []
    for row in rows:
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row["Metric Unit"].strip()
        if unit not in UNIT_US:
            raise ValueError(f"gpu__time_duration.sum: unexpected unit {unit!r}")
        out.append((row["Kernel Name"], float(row["Metric Value"].replace(",", "")) * UNIT_US[unit]))
    return out


def short_name(kernel: str) -> str:
    """mmq_q4_k_bm64_bn16(...) -> mmq_q4_k_bm64_bn16; cupy_add__float32_... -> cupy_add."""
    name = kernel.split("(")[0].strip()
    return re.sub(r"__.*$", "", name)


def summarize(launches: list[tuple[str, float]], title: str) -> str:
    total = sum(us for _, us in launches)
    groups: dict[str, list[float]] = defaultdict(list)
    for name, us in launches:
        groups[short_name(name)].append(us)
    lines = [f"# {title}", "", f"{len(launches)} kernel launches, {total / 1e3:.3f} ms of kernel time "
             "(serialised by ncu: launch gaps not included)", "",
             "| kernel | launches | total us | share | mean us |", "|---|---|---|---|---|"]
    for name, times in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        t = sum(times)
        lines.append(f"| {name} | {len(times)} | {t:.1f} | {t / total:.1%} | {t / len(times):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(args[0])
    print(summarize(kernel_times(path.read_text()), f"Kernels of one decode step ({path.name})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
