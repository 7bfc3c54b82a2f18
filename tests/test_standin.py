"""The 12B-shaped stand-ins (harness/standin.py): exact 12B layout and type mix, checked against the byte counts
in ../shared/reference/perf-anchor.md, and a small stand-in written end to end through the same writer.

The full 7.4 GB files are built on the GPU machine (tests/test_standin_gpu.py); here the writer runs on small
shapes, which exercises every code path (header, offsets, vectors, parallel block fill)."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from gemma_oracle.engine.model_file import load_model
from gemma_oracle.harness.fixtures.fast_blocks import row_bytes
from gemma_oracle.harness.fixtures.synthetic import written_tensors
from gemma_oracle.harness.fixtures.presets import Preset
from gemma_oracle.harness.fixtures.standin import STANDINS, StandIn, planned_types, write_standin
from gemma_oracle.oracles.metrics import screen_nonfinite, top1_top2_margin

pytestmark = pytest.mark.synthetic


def _data_bytes(standin: StandIn) -> int:
    types = planned_types(standin)
    total = 0
    for t in written_tensors(standin.config()):
        total += 4 * int(np.prod(t.ne)) if types[t.name] == "F32" else t.ne[1] * row_bytes(types[t.name], t.ne[0])
    return total


def test_shape12b_has_the_12b_layout():
    cfg = STANDINS["shape12b"].config()
    globals_ = [i for i in range(48) if not cfg.layer_is_sliding[i]]
    assert (cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.vocab_size, cfg.sliding_window) == (48, 3840, 16, 262144, 1024)
    assert globals_ == list(range(5, 48, 6))
    assert all(cfg.layer_k_eq_v[i] for i in globals_) and not any(cfg.layer_k_eq_v[i] for i in range(48) if i not in globals_)
    assert {cfg.n_kv_heads[i] for i in globals_} == {1} and {cfg.head_dim(i) for i in globals_} == {512}
    assert {cfg.n_kv_heads[i] for i in range(48) if i not in globals_} == {8}
    assert {cfg.head_dim(i) for i in range(48) if i not in globals_} == {256}
    assert set(cfg.n_ff) == {15360} and cfg.tied_output
    names = {t.name for t in written_tensors(cfg)}
    assert "blk.5.attn_v.weight" not in names and "blk.4.attn_v.weight" in names


def test_shape12b_type_mix_and_bytes_match_the_perf_anchor():
    """perf-anchor.md: 284 Q4_K, 45 Q6_K (token_embd + 24 ffn_down + 20 attn_v), 338 F32; 7,365,558,464 data bytes."""
    types = planned_types(STANDINS["shape12b"])
    assert Counter(types.values()) == {"Q4_K": 284, "Q6_K": 45, "F32": 338}
    q6 = Counter(name.split(".")[-2] for name, t in types.items() if t == "Q6_K")
    assert q6 == {"token_embd": 1, "ffn_down": 24, "attn_v": 20}
    assert _data_bytes(STANDINS["shape12b"]) == 7_365_558_464


def test_shape12b_q4_0_mix_and_bytes_match_the_perf_anchor():
    """perf-anchor.md: all linear weights Q4_0, token_embd Q6_K, 6,966,801,120 bytes. That figure is the FILE size:
    its Q4_K_M file is 7,372,305,120 bytes for 7,365,558,464 of data, so the same 6,746,656 bytes of header come
    off it here."""
    types = planned_types(STANDINS["shape12b-q4_0"])
    assert types["token_embd.weight"] == "Q6_K"
    assert {t for n, t in types.items() if n != "token_embd.weight"} == {"Q4_0", "F32"}
    assert _data_bytes(STANDINS["shape12b-q4_0"]) == 6_966_801_120 - (7_372_305_120 - 7_365_558_464)


SMALL = Preset("small12b", "the 12B pattern at toy size", n_layers=12, full_layers=(5, 11), hidden=256, n_heads=4,
               head_dim_sliding=64, head_dim_full=128, kv_heads_sliding=2, kv_heads_full=1, n_ff=512,
               sliding_window=16, k_eq_v_layers=(5, 11), context_length=512)


@pytest.fixture(scope="module", params=["q4_k_m", "q4_0"])
def small_standin(request, tmp_path_factory):
    standin = StandIn(f"small-{request.param}", request.param, "test", preset=SMALL, vocab_size=1024)
    path = write_standin(tmp_path_factory.mktemp("standin") / "small.gguf", standin, seed=7, processes=1)
    return standin, path


def test_small_standin_loads_with_the_planned_config_and_types(small_standin):
    standin, path = small_standin
    model = load_model(path)
    assert model.config.layer_k_eq_v == standin.config().layer_k_eq_v
    assert model.config.n_kv_heads == standin.config().n_kv_heads and model.config.vocab_size == 1024
    assert {name: t.type_name for name, t in model.tensors.items()} == planned_types(standin)
    assert model.gguf.metadata["general.synthetic"] is True


def test_small_standin_values_have_the_intended_scale(small_standin):
    """Each matrix's dequantized std is within 5 % of 1/sqrt(fan-in) (token_embd: the preset's embed_std; fp16
    rounding of a subnormal Q6_K d allows a few %), its mean near 0."""
    standin, path = small_standin
    model = load_model(path)
    for t in written_tensors(standin.config()):
        if t.kind != "matrix":
            continue
        values = model.dequantize(t.name).astype(np.float64)
        want = SMALL.embed_std if t.name == "token_embd.weight" else 1 / np.sqrt(t.ne[0])
        if t.name == "token_embd.weight":  # rows scaled for the vocabulary's frequent head (StandIn docstring)
            scales = standin.embedding_row_scales()
            row_std = values.reshape(standin.vocab_size, -1).std(axis=1) / (want * scales)
            assert np.all(np.abs(row_std - 1) < 0.35) and abs(np.median(row_std) - 1) < 0.05, row_std
            want *= float(np.sqrt(np.mean(scales**2)))
        assert abs(values.std() / want - 1) < 0.05, (t.name, values.std(), want)
        assert abs(values.mean()) < 0.05 * want, (t.name, values.mean(), want)


def test_small_standin_bytes_do_not_depend_on_process_count(small_standin, tmp_path):
    standin, path = small_standin
    again = write_standin(tmp_path / "again.gguf", standin, seed=7, processes=2)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_small_standin_is_well_conditioned(small_standin):
    """The conditioning checks of tests/test_conditioning.py, on the float64 engine: finite logits, none pinned at
    the softcap, median top1-top2 margin >= 0.5."""
    from gemma_oracle.engine.engine import GemmaEngine
    from gemma_oracle.harness.suites.synthetic import sequences

    _, path = small_standin
    engine = GemmaEngine(path, "numpy64", prefill_chunk=32)
    prompts, _ = sequences(engine.vocab_size, 6)
    logits = np.asarray([engine.prefill(engine.new_sequence(), p) for p in prompts])
    assert screen_nonfinite(logits, logits) is None
    assert float(np.mean(np.abs(logits) > 0.99 * 30.0)) < 1e-3
    assert float(np.median(top1_top2_margin(logits))) >= 0.5
