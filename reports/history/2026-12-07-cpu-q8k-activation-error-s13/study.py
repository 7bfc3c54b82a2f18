"""How much larger is a matmul's error with Q8_K-style activations (one scale per 256 values) than with Q8_1 (one per
32)? The real Gemma 3 270M (Q4_K_M) on the float64 reference: every matmul input is recorded, and the product with the
dequantized weight is compared for x, Q8_1(x) and Q8_K(x). NMSE over each matmul's outputs."""
import sys, collections
import numpy as np
from gemma_oracle.engine.engine import GemmaEngine
from gemma_oracle.kernels.reference.q8_1 import quantize_q8_1, dequantize_q8_1

def q8_blocks(x, block):
    xb = x.reshape(x.shape[0], -1, block).astype(np.float32)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    d = (amax / 127).astype(np.float32)
    q = np.where(d > 0, np.round(xb / np.where(d > 0, d, 1)), 0)
    return (q * d).reshape(x.shape)

def q8_pow2(x, emax):
    """One scale d per 256 values, each 32-value block at d * 2^-e (e = 0..emax, the largest that keeps the block's
    codes within 127): the sub-block dots can be summed as integers shifted by emax - e."""
    xb = x.reshape(x.shape[0], -1, 8, 32).astype(np.float32)
    amax = np.abs(xb).max(axis=(-1, -2), keepdims=True)
    d = (amax / 127).astype(np.float32)
    bmax = np.abs(xb).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        e = np.clip(np.floor(np.log2(np.where(bmax > 0, amax / bmax, 2.0 ** emax))), 0, emax)
    db = d * 2.0 ** -e
    q = np.where(db > 0, np.clip(np.round(xb / np.where(db > 0, db, 1)), -127, 127), 0)
    return (q * db).reshape(x.shape)

stats = collections.defaultdict(list)
class Rec:
    def __init__(self, inner): self.inner = inner
    def __getattr__(self, k): return getattr(self.inner, k)
    def matmul(self, x, w):
        y = self.inner.matmul(x, w)
        if x.shape[1] % 256 == 0 and w.shape[0] < 100000:
            xf = x.astype(np.float32).astype(np.float64)
            y0 = xf @ w.T
            x1 = dequantize_q8_1(quantize_q8_1(x.astype(np.float32)))[0].astype(np.float64)
            y1 = x1 @ w.T
            y2 = q8_blocks(x, 256).astype(np.float64) @ w.T
            y3 = q8_pow2(x, 3).astype(np.float64) @ w.T
            y4 = q8_pow2(x, 7).astype(np.float64) @ w.T
            den = (y0 ** 2).mean() + 1e-300
            stats[(x.shape[1], w.shape[0])].append(tuple(((yy - y0) ** 2).mean() / den for yy in (y1, y2, y3, y4)))
        return y
eng = GemmaEngine(sys.argv[1])
eng.model.ops = Rec(eng.model.ops)
seq = eng.new_sequence()
toks = [2] + list(range(1000, 1000 + 47))
eng.prefill(seq, toks)
print("| K x rows | matmuls | NMSE Q8_1 (median / max) | Q8_K-style | pow2 sub-scales e<=3 | pow2 e<=7 |")
print("|---|---|---|---|---|---|")
for k, v in sorted(stats.items()):
    a = np.array(v)
    cells = " | ".join(f"{np.median(a[:,i]):.2e} / {a[:,i].max():.2e} ({np.median(a[:,i])/np.median(a[:,0]):.1f}x)" for i in (1, 2, 3))
    print(f"| {k[0]} x {k[1]} | {len(a)} | {np.median(a[:,0]):.2e} / {a[:,0].max():.2e} | {cells} |")
