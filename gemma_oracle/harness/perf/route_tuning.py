"""Route tuning on the GPU: every route (WS, GEMM-N, decode-MMQ in each tile) timed on each matrix shape of a
model at each N, from which the router's table (engine/routing.py) and the tile rules (kernels/mmq.py) are set.

    python -m gemma_oracle.harness.perf.route_tuning --model shape12b --out DIR       # DIR/route-tuning.md, route-tuning.parquet

The shapes and types are the model's (a stand-in's planned types need no file: weights are random valid blocks
from harness/fast_blocks.py). Each timing is CUDA events around `reps` launches, median of `repeats`, rotating
over enough copies of the weight that the working set exceeds L2 (50 MiB on the H100), so a small matrix is
timed from HBM as it is in a decode step, not from cache. MMQ is timed on pre-quantized Q8_1 activations (the
engine quantizes each input once for all the matrices that share it); the quantization is timed separately.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where a table is made (the GPU box's tuning needs it, the CLI's help not)
    import pandas

N_LIST = (1, 2, 3, 4, 5, 6, 8, 12, 16, 17, 32)
ROTATE_BYTES = 256 << 20  # working set per timing: 5x the H100's L2


@dataclass(frozen=True)
class Shape:
    type_name: str
    rows: int
    cols: int
    count: int  # matrices of this shape in one decode step
    example: str  # one tensor name of this shape


def model_shapes(name: str) -> list[Shape]:
    """The distinct (type, rows, cols) matmuls of one decode step of a stand-in or mini preset."""
    from gemma_oracle.harness.fixtures.synthetic import written_tensors
    from gemma_oracle.harness.fixtures.standin import STANDINS, planned_types

    if name in STANDINS:
        standin = STANDINS[name]
        cfg, types = standin.config(), planned_types(standin)
    else:
        from gemma_oracle.harness.fixtures.synthetic import planned_types as preset_types
        from gemma_oracle.harness.fixtures.presets import PRESETS
        from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab

        variant = name.split(":")[1] if ":" in name else "q4_k_m"
        preset = PRESETS[name.split(":")[0]]
        cfg, types = preset.config(len(small_vocab().tokens)), preset_types(preset, variant)
    counts: Counter = Counter()
    example = {}
    for t in written_tensors(cfg):
        if t.kind != "matrix" or t.name == "per_layer_token_embd.weight":
            continue
        if t.layer is not None and not cfg.owns_kv(t.layer) and t.name.split(".")[-2] in ("attn_k", "attn_v"):
            continue  # dead K/V weights of KV-shared layers are never multiplied
        key = (types[t.name], t.ne[1], t.ne[0])
        counts[key] += 1
        example.setdefault(key, t.name)
    return [Shape(k[0], k[1], k[2], c, example[k]) for k, c in sorted(counts.items(), key=lambda kv: -kv[0][1] * kv[0][2])]


SLICE_LIST = (1, 2, 4, 8, 16, 32)


def select_dq_tiles(spec: tuple[str, ...] | None) -> tuple[str, ...]:
    """The dequant-MMA tiles `--dq-tiles` names: tile names and/or kinds ("smem", "direct"); None: every tile.
    ValueError names what is unknown and what is expected."""
    from gemma_oracle.kernels.dq_mma import TILES as DQ_TILES

    if spec is None:
        return tuple(DQ_TILES)
    kinds = {t.kind for t in DQ_TILES.values()}
    unknown = sorted(set(spec) - set(DQ_TILES) - kinds)
    if unknown:
        raise ValueError(f"--dq-tiles: unknown {unknown}; expected tile kinds {sorted(kinds)} or tiles {sorted(DQ_TILES)}")
    return tuple(name for name, t in DQ_TILES.items() if name in spec or t.kind in spec)


def tune(shapes: list[Shape], n_list=N_LIST, repeats: int = 5, log=print, slice_list=SLICE_LIST,
         tiles: tuple[str, ...] | None = None, dq_tiles: tuple[str, ...] | None = None,
         packed_caps: tuple[int, ...] = (), mmq_routes: bool = True) -> list[dict]:
    """Time every route on every shape and N. tiles: the decode-MMQ tiles to time (default every one in TILES);
    the chosen tile (TILE_RULES) is always timed. slice_list: the other K splits timed on the chosen tile.
    dq_tiles: the dequant-MMA tiles to time (select_dq_tiles; the chosen one always). packed_caps: K-split caps C
    at which every packed tile is timed too (min(shape's split, C) slices; packed_cap_lines compares the policies).
    mmq_routes=False: packed MMA (and the float routes, the bar) only."""
    import cupy as cp
    import numpy as np

    from gemma_oracle.kernels.dq_mma import DQ_MMA_TYPES, TILES as DQ_TILES, choose_tile as dq_choose_tile, dq_mma_matvec
    from gemma_oracle.kernels.f16_rows import f16_rows
    from gemma_oracle.kernels.matvec import matvec
    from gemma_oracle.kernels.mmq import MMQ_TYPES, TILES, choose_tile, dp4a_pairs, mmq_matvec, split_k_slices
    from gemma_oracle.kernels.packed_mma import (PACKED_TYPES, TILES as PK_TILES, choose_tile as pk_choose_tile,
                                                 pack_weights, packed_mma_matvec, packed_x)
    from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1

    from gemma_oracle.harness.fixtures.fast_blocks import random_blocks
    from gemma_oracle.harness.perf.gpu_timing import graph_time_ms

    rows_out = []
    for shape in shapes:
        host = random_blocks(shape.type_name, shape.rows, shape.cols, 1 / np.sqrt(shape.cols),
                             np.random.default_rng(shape.rows * 7 + shape.cols))
        copies = max(1, min(16, -(-ROTATE_BYTES // host.nbytes)))
        weights = [cp.asarray(host) for _ in range(copies)]
        packable = shape.type_name in PACKED_TYPES and shape.cols % 64 == 0
        packed = [pack_weights(w, shape.type_name, shape.cols) for w in weights] if packable else []
        reps = max(copies, min(64, int(2e9 // host.nbytes)))
        for n in n_list:
            x = cp.asarray(np.random.default_rng(n).standard_normal((n, shape.cols)).astype(np.float32))
            xq = quantize_q8_1(x)
            out = cp.empty((n, shape.rows), dtype=cp.float32)
            candidates = [("gemm_n", None, None, lambda i: matvec(weights[i % copies], shape.type_name, shape.cols, x,
                                                             route="gemm_n", out=out))]
            if n <= 16:
                candidates.append(("ws", None, None, lambda i: matvec(weights[i % copies], shape.type_name, shape.cols, x,
                                                                 route="ws", out=out)))
            auto_slices = split_k_slices(shape.rows, shape.cols // 32)
            chosen = choose_tile(shape.type_name, shape.rows, shape.cols, n).name
            if shape.type_name in MMQ_TYPES and mmq_routes:
                for tile in (TILES if tiles is None else dict.fromkeys((*tiles, chosen))):  # at the shape's K split
                    candidates.append(("decode_mmq", tile, auto_slices, lambda i, tile=tile: mmq_matvec(
                        weights[i % copies], shape.type_name, shape.cols, xq, out=out, tile=tile)))
                    if dp4a_pairs(shape.type_name, TILES[tile], shape.cols // 32, auto_slices):
                        # the same tile without the paired entry (which it takes by default): "<tile>_p1"
                        candidates.append(("decode_mmq", f"{tile}_p1", auto_slices, lambda i, tile=tile: mmq_matvec(
                            weights[i % copies], shape.type_name, shape.cols, xq, out=out, tile=tile, pair=False)))
                for k in slice_list:  # the chosen tile at other K splits (tuning SPLIT_* in kernels/mmq.py)
                    if k != auto_slices and k <= shape.cols // 32:
                        candidates.append(("decode_mmq", chosen, k, lambda i, k=k: mmq_matvec(
                            weights[i % copies], shape.type_name, shape.cols, xq, out=out, tile=chosen, slices=k)))
            if shape.type_name in DQ_MMA_TYPES and mmq_routes:  # dequant-MMA on pre-converted fp16 rows, every tile
                x16 = f16_rows(x)
                dq_chosen = dq_choose_tile(n).name
                for tile in dict.fromkeys((*select_dq_tiles(dq_tiles), dq_chosen)):
                    if DQ_TILES[tile].bn > 8 * n and tile != dq_chosen:
                        continue  # a tile mostly of padding tokens
                    candidates.append(("dq_mma", tile, auto_slices, lambda i, tile=tile: dq_mma_matvec(
                        weights[i % copies], shape.type_name, shape.cols, x16, out=out, tile=tile)))
            if packed:  # packed MMA on its fragment-ordered activations, every tile
                xf = packed_x(x)
                pk_chosen = pk_choose_tile(n, shape.rows, shape.cols).name
                for tile in PK_TILES:
                    if PK_TILES[tile].bn > 8 * n and tile != pk_chosen:
                        continue  # a tile mostly of padding tokens
                    candidates.append(("packed_mma", tile, auto_slices, lambda i, tile=tile: packed_mma_matvec(
                        packed[i % copies], xf, out=out, tile=tile)))
                for k in slice_list:  # the chosen tile at other K splits (the split-K epilogue's cost grows with N)
                    if k != auto_slices and k <= shape.cols // 32:
                        candidates.append(("packed_mma", pk_chosen, k, lambda i, k=k: packed_mma_matvec(
                            packed[i % copies], xf, out=out, tile=pk_chosen, slices=k)))
                for k in sorted({min(auto_slices, c) for c in packed_caps} - {auto_slices} - set(slice_list)):
                    for tile in PK_TILES:  # every tile at a capped split (a split policy for every N)
                        if PK_TILES[tile].bn > 8 * n and tile != pk_chosen:
                            continue
                        candidates.append(("packed_mma", tile, k, lambda i, tile=tile, k=k: packed_mma_matvec(
                            packed[i % copies], xf, out=out, tile=tile, slices=k)))
            for route, tile, k, fn in candidates:
                ms, spread = graph_time_ms(fn, reps=reps, repeats=repeats)
                rows_out.append(dict(type=shape.type_name, rows=shape.rows, cols=shape.cols, count=shape.count,
                                     example=shape.example, n=n, route=route, tile=tile or "", slices=k or 0,
                                     auto_slices=k == auto_slices,
                                     chosen_tile=(route == "decode_mmq" and tile == chosen and k == auto_slices)
                                     or (route == "dq_mma" and tile == dq_choose_tile(n).name)
                                     or (route == "packed_mma" and tile == pk_choose_tile(n, shape.rows,
                                                                                          shape.cols).name),
                                     us=ms * 1e3, spread_us=spread * 1e3, gb_s=host.nbytes / (ms * 1e-3) / 1e9))
            q_ms, q_spread = graph_time_ms(lambda i: quantize_q8_1(x), reps=32, repeats=repeats)
            rows_out.append(dict(type="Q8_1", rows=0, cols=shape.cols, count=0, example="activation quantize", n=n,
                                 route="q8_1", tile="", slices=0, auto_slices=False, chosen_tile=False,
                                 us=q_ms * 1e3, spread_us=q_spread * 1e3,
                                 gb_s=0.0))
            f_ms, f_spread = graph_time_ms(lambda i: f16_rows(x), reps=32, repeats=repeats)
            rows_out.append(dict(type="F16", rows=0, cols=shape.cols, count=0, example="activation fp16 rows", n=n,
                                 route="f16_rows", tile="", slices=0, auto_slices=False, chosen_tile=False,
                                 us=f_ms * 1e3, spread_us=f_spread * 1e3, gb_s=0.0))
            if packed:
                p_ms, p_spread = graph_time_ms(lambda i: packed_x(x), reps=32, repeats=repeats)
                rows_out.append(dict(type="F16", rows=0, cols=shape.cols, count=0, example="activation records",
                                     n=n, route="packed_x", tile="", slices=0, auto_slices=False, chosen_tile=False,
                                     us=p_ms * 1e3, spread_us=p_spread * 1e3, gb_s=0.0))
        log(f"  {shape.type_name:5s} {shape.rows:6d} x {shape.cols:5d} (x{shape.count}) timed")
        weights.clear()  # free the copies before the next shape (the lambdas above are done with them)
        packed.clear()
        cp.get_default_memory_pool().free_all_blocks()
    return rows_out


def summarize(rows: list[dict], device: str, read_gb_s: float) -> str:
    """Markdown: per shape and N the best WS/GEMM-N time, the best MMQ tile and time, and whether MMQ wins; the
    crossover N per shape; the per-step matmul time per route mode (count-weighted)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if "slices" not in df:  # runs recorded before split K: one slice, every MMQ row at the shape's own split
        df["slices"], df["auto_slices"] = 1, True
    mats = df[~df.route.isin(["q8_1", "f16_rows", "packed_x"])]
    lines = [f"# Route tuning on {device} (streaming read {read_gb_s:.0f} GB/s)", "",
             "Per shape: microseconds per matmul (median), best float route (WS up to 16, else GEMM-N) vs the best",
             "decode-MMQ tile at the shape's K split (split_k_slices); GB/s of weight bytes read in brackets; then the",
             "chosen tile at its K split, at one slice (no split), and at the fastest K split timed.", ""]
    crossover = {}
    for (t, r, c), g in mats.groupby(["type", "rows", "cols"], sort=False):
        lines.append(f"## {t} {r} x {c} (x{int(g['count'].iloc[0])}, e.g. {g['example'].iloc[0]})")
        lines.append("| N | WS / GEMM-N us | best MMQ tile | MMQ us | chosen tile us (slices) | 1 slice us "
                     "| fastest split us (slices) | MMQ / float | best dq-MMA tile | dq-MMA us | dq-MMA / best MMQ "
                     "| best packed tile | packed us | packed / best MMQ |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n, gn in g.groupby("n"):
            dq = gn[gn.route == "dq_mma"].sort_values("us")
            dq_cells = (f" {dq.iloc[0].tile} | {dq.iloc[0].us:.1f} ({dq.iloc[0].gb_s:.0f}) |" if not dq.empty
                        else " – | – |")
            flt = gn[gn.route.isin(["ws", "gemm_n"])].sort_values("us").iloc[0]
            mmq_all = gn[gn.route == "decode_mmq"].sort_values("us")
            mmq = mmq_all[mmq_all.auto_slices.astype(bool)]
            if mmq.empty:
                lines.append(f"| {n} | {flt.us:.1f} ({flt.gb_s:.0f}, {flt.route}) | – | – | – | – | – | – |")
                continue
            best, chosen = mmq.iloc[0], mmq[mmq.chosen_tile].iloc[0]
            same_tile = mmq_all[mmq_all.tile == chosen.tile]
            one = same_tile[same_tile.slices == 1]
            fastest = same_tile.iloc[0]
            ratio = best.us / flt.us
            if ratio < 1 and (t, r, c) not in crossover:
                crossover[(t, r, c)] = n
            dq_cells += f" {dq.iloc[0].us / best.us:.2f} |" if not dq.empty else " – |"
            pk = gn[(gn.route == "packed_mma") & gn.auto_slices.astype(bool)].sort_values("us")
            dq_cells += (f" {pk.iloc[0].tile} | {pk.iloc[0].us:.1f} ({pk.iloc[0].gb_s:.0f}) | {pk.iloc[0].us / best.us:.2f} |"
                         if not pk.empty else " – | – | – |")
            lines.append(f"| {n} | {flt.us:.1f} ({flt.gb_s:.0f}, {flt.route}) | {best.tile} | {best.us:.1f} "
                         f"({best.gb_s:.0f}) | {chosen.us:.1f} ({int(chosen.slices)}) | "
                         f"{one.us.iloc[0]:.1f} | {fastest.us:.1f} ({int(fastest.slices)}) | {ratio:.2f} |" + dq_cells
                         if not one.empty else
                         f"| {n} | {flt.us:.1f} ({flt.gb_s:.0f}, {flt.route}) | {best.tile} | {best.us:.1f} "
                         f"({best.gb_s:.0f}) | {chosen.us:.1f} ({int(chosen.slices)}) | – | "
                         f"{fastest.us:.1f} ({int(fastest.slices)}) | {ratio:.2f} |" + dq_cells)
        lines.append(f"\ncrossover: decode-MMQ first beats the float route at N = {crossover.get((t, r, c), 'never')}\n")
    lines += packed_tile_lines(mats)
    lines += packed_cap_lines(mats)
    q = df[df.route == "q8_1"].groupby("n").us.median()
    lines.append("Q8_1 activation quantization, median us per call by N: "
                 + ", ".join(f"{n}: {v:.1f}" for n, v in q.items()))
    f = df[df.route == "f16_rows"].groupby("n").us.median()
    if not f.empty:
        lines.append("\nfp16 activation rows (dequant-MMA's input), median us per call by N: "
                     + ", ".join(f"{n}: {v:.1f}" for n, v in f.items()))
    return "\n".join(lines) + "\n"


def packed_step_us(mats, tall: bool | None = None) -> pandas.DataFrame | None:
    """Per N and packed tile, the count-weighted sum of us over the shapes every tile of that N was timed on (a
    step's packed matmul time with that tile everywhere): a DataFrame [n x tile]. tall: only the shapes of rows >=
    packed_mma.TALL x cols (True) or the others (False)."""
    import pandas as pd

    from gemma_oracle.kernels.packed_mma import TALL

    pk = mats[mats.route == "packed_mma"]
    if tall is not None:
        pk = pk[(pk.rows >= TALL * pk.cols) == tall]
    if "auto_slices" in pk:
        pk = pk[pk.auto_slices.astype(bool)]  # each shape at its own K split
    if pk.empty:
        return None
    table = pk.assign(step=pk.us * pk["count"]).pivot_table(index=["n", "type", "rows", "cols"], columns="tile",
                                                            values="step")
    sums = {}
    for n, g in table.groupby(level="n"):
        g = g.dropna(axis=1, how="all").dropna(axis=0, how="any")  # this N's tiles; the shapes all of them ran on
        sums[n] = g.sum()
    return pd.DataFrame(sums).T.rename_axis("n")


def suggested_packed_rules(mats) -> str:
    """GEMMA_ORACLE_PACKED_TILES's value (kernels/packed_mma.py) from the tuning: at each timed N the tile with the
    least count-weighted time over the shapes under packed_mma.TALL rows a column ("N:tile", serving up to the next
    timed N), and over the tall ones where another tile wins there ("N@TALL:tile")."""
    from gemma_oracle.kernels.packed_mma import TALL

    table, tall = packed_step_us(mats, tall=False), packed_step_us(mats, tall=True)
    if table is None or table.empty:
        return ""
    rules = []
    for n in sorted(table.index, reverse=True):
        best = table.loc[n].dropna().idxmin()
        if tall is not None and n in tall.index and not tall.loc[n].dropna().empty:
            best_tall = tall.loc[n].dropna().idxmin()
            if best_tall != best:
                rules.append(f"{n}@{TALL:g}:{best_tall}")
        rules.append(f"{n}:{best}")
    return ",".join(rules)


def mmq_step_us(mats) -> dict[int, float]:
    """Per N, the count-weighted sum over the shapes of decode-MMQ's fastest tile at the shape's own K split (the
    step's decode-MMQ matmul time with the best tile everywhere): the bar packed MMA's row of the same N must beat."""
    mmq = mats[mats.route == "decode_mmq"]
    if "auto_slices" in mmq:
        mmq = mmq[mmq.auto_slices.astype(bool)]
    if mmq.empty:
        return {}
    best = mmq.assign(step=mmq.us * mmq["count"]).groupby(["n", "type", "rows", "cols"]).step.min()
    return best.groupby(level="n").sum().to_dict()


def packed_tile_lines(mats) -> list[str]:
    table = packed_step_us(mats)
    if table is None or table.empty:
        return []
    mmq = mmq_step_us(mats)
    lines = ["## Packed MMA tiles: count-weighted matmul us a step, per N (every shape but those some tile missed)",
             "", "best decode-MMQ: its fastest tile of those timed on every shape (all shapes it ran on), for comparison", "",
             "| N | " + " | ".join(table.columns) + " | best decode-MMQ |", "|---|" + "---|" * (len(table.columns) + 1)]
    for n, row in table.iterrows():
        best = row.dropna().idxmin()
        cells = ["–" if v != v else f"**{v:.0f}**" if c == best else f"{v:.0f}" for c, v in row.items()]
        cells.append(f"{mmq[n]:.0f}" if n in mmq else "–")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append(f"\nsuggested GEMMA_ORACLE_PACKED_TILES={suggested_packed_rules(mats)}\n")
    return lines


def packed_cap_us(mats) -> pandas.DataFrame | None:
    """Per N and K-split policy ("own": each shape's split_k_slices; "cap C": min(own, C)), the count-weighted matmul
    us a step with each shape's fastest packed tile ("best tile a shape") and with the one tile fastest over all
    shapes ("best one tile", its name beside): the shapes every policy of that N was timed on."""
    import pandas as pd

    pk = mats[mats.route == "packed_mma"]
    if pk.empty or "auto_slices" not in pk:
        return None
    key = ["type", "rows", "cols"]
    own = pk[pk.auto_slices.astype(bool)].groupby(key).slices.first().rename("own")
    pk = pk.join(own, on=key).assign(step=lambda d: d.us * d["count"])
    caps = sorted({int(s) for s in pk.slices[~pk.auto_slices.astype(bool)].unique()})  # the capped splits timed
    out = []
    for n, g in pk.groupby("n"):
        policies = {"own": g[g.auto_slices.astype(bool)]}
        for c in caps:
            policies[f"cap {c}"] = g[g.slices == g.own.clip(upper=c)]
        shapes = set.intersection(*(set(map(tuple, p[key].drop_duplicates().values)) for p in policies.values()))
        for name, p in policies.items():
            p = p[p[key].apply(tuple, axis=1).isin(shapes)]
            if p.empty:
                continue
            per_tile = p.pivot_table(index=key, columns="tile", values="step").dropna(axis=1, how="any")
            one = per_tile.sum().idxmin() if not per_tile.empty else ""
            out.append(dict(n=n, policy=name, best_tile_a_shape=p.groupby(key).step.min().sum(),
                            best_one_tile=per_tile[one].sum() if one else float("nan"), one_tile=one))
    return pd.DataFrame(out) if out else None


def packed_cap_lines(mats) -> list[str]:
    table = packed_cap_us(mats)
    if table is None or set(table.policy) == {"own"}:
        return []
    lines = ["## Packed MMA K-split policies: count-weighted matmul us a step, per N", "",
             "own: each shape's split_k_slices (decode-MMQ's); cap C: at most C slices. A batch-invariant mode must "
             "use one policy at every N.", "", "| N | policy | best tile a shape | best one tile (tile) |",
             "|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.n} | {r.policy} | {r.best_tile_a_shape:.0f} | {r.best_one_tile:.0f} ({r.one_tile}) |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.route_tuning", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shape12b", help="a stand-in or mini preset (preset:variant)")
    p.add_argument("--n", nargs="+", type=int, default=list(N_LIST))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiles", nargs="+", help="decode-MMQ tiles to time (default: every tile; the chosen one always)")
    p.add_argument("--slices", nargs="*", type=int, default=list(SLICE_LIST),
                   help="other K splits to time on the chosen tile (none: only the shape's own split)")
    p.add_argument("--dq-tiles", nargs="+", help="dequant-MMA tiles or tile kinds to time (default: every tile; the "
                                                  "chosen one always)")
    p.add_argument("--packed-caps", nargs="*", type=int, default=[],
                   help="K-split caps at which every packed tile is timed too (min(shape's split, C) slices)")
    p.add_argument("--packed-only", action="store_true", help="time packed MMA and the float routes only")
    p.add_argument("--out", help="directory for route-tuning.md and route-tuning.parquet")
    args = p.parse_args(argv)
    from gemma_oracle.kernels.mmq import TILES

    unknown = sorted(set(args.tiles or ()) - set(TILES))
    if unknown:
        p.error(f"--tiles: unknown {unknown}; expected some of {sorted(TILES)}")
    try:
        select_dq_tiles(tuple(args.dq_tiles) if args.dq_tiles else None)
    except ValueError as e:
        p.error(str(e))
    import cupy as cp

    from gemma_oracle.harness.perf.devices import gpu_read_bandwidth_gb_s as read_bandwidth_gb_s

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    bw = read_bandwidth_gb_s()
    shapes = model_shapes(args.model)
    print(f"{args.model}: {len(shapes)} matmul shapes on {device}", file=sys.stderr)
    rows = tune(shapes, tuple(args.n), args.repeats, log=lambda m: print(m, file=sys.stderr),
                slice_list=tuple(args.slices), tiles=tuple(args.tiles) if args.tiles else None,
                dq_tiles=tuple(args.dq_tiles) if args.dq_tiles else None, packed_caps=tuple(args.packed_caps),
                mmq_routes=not args.packed_only)
    text = summarize(rows, device, bw)
    print(text)
    if args.out:
        import pandas as pd

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "route-tuning.md").write_text(text)
        df = pd.DataFrame(rows)
        (out / "packed-rules.txt").write_text(suggested_packed_rules(df[df.route == "packed_mma"]) + "\n")
        pd.DataFrame(rows).to_parquet(out / "route-tuning.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
