"""Summarise a junit XML of the GPU suite: results.parquet (one row per test) and summary.md."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_rows(junit: Path) -> list[dict]:
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (el.get("message") or "")[:300]
        # the GPU a pinned worker ran the test on (the plugin's junit property), None when not pinned
        gpu = next((p.get("value") for p in case.iter("property") if p.get("name") == "gpu"), None)
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time") or 0.0), "detail": detail,
                     "gpu": int(gpu) if gpu is not None else None})
    return rows


def main(junit: str, out_dir: str) -> int:
    import pandas as pd

    out = Path(out_dir)
    df = pd.DataFrame(junit_rows(Path(junit)))
    if len(df):
        df["gpu"] = df["gpu"].astype("Int64")  # nullable: rows of an unpinned run have no GPU
    df.to_parquet(out / "results.parquet", index=False)
    counts = df["outcome"].value_counts().to_dict() if len(df) else {}
    gpus = (out / "gpu.txt").read_text().splitlines() if (out / "gpu.txt").exists() else ["unknown GPU"]
    wall = [(out / "wall.txt").read_text().strip(), ""] if (out / "wall.txt").exists() else []
    lines = [f"# GPU suite on {'; '.join(g for g in gpus if g.strip())}", "", *wall,
             ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no tests", ""]
    bad = df[df["outcome"].isin(["failed", "error"])] if len(df) else df
    for _, r in bad.head(30).iterrows():
        lines.append(f"- {r['outcome']}: {r['test']}: {r['detail']}")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
