set -u
out=$OUT
site=/tmp/gemma-oracle-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest tests/test_kernels_dq_mma_gpu.py -p no:cacheprovider -q -n 12 > $out/pytest-dq.log 2>&1; grep -E "passed|failed" $out/pytest-dq.log | tail -2; grep -E "^FAILED" $out/pytest-dq.log | head -8
timeout 200 python3 -m gemma_oracle.harness.perf.route_tuning --model shape12b --n 1 8 16 32 --repeats 3 --slices --tiles bm64_bn8 --out $out/tune-shape12b > $out/tune.log 2>&1
cp $out/tune-shape12b/route-tuning.md $out/tune-shape12b.md
python3 - <<'PY'
import pandas as pd, os
df = pd.read_parquet(os.environ["OUT"] + "/tune-shape12b/route-tuning.parquet")
for (t, r, c), g in df[df.route.isin(["dq_mma", "decode_mmq"])].groupby(["type", "rows", "cols"]):
    best = g[g.route == "decode_mmq"].groupby("n").us.min()
    d = g[g.route == "dq_mma"].pivot(index="tile", columns="n", values="us")
    print(t, r, c, "mmq best:", best.round(1).to_dict())
    print(d[[i.startswith("direct") or i.startswith("w4_m1") for i in d.index]].round(1).to_string())
PY
