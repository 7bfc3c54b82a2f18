"""An engine in another process through the stdio protocol (docs/stdio-protocol.md, `--engine process`):

* our numpy engine served by stdio_serve is, through ProcessEngine, the same engine bit for bit (single-user and
  batched logits, the golden run's every comparison, describe, prefill_batch, last_batch);
* the C example peer (examples/stdio-peer-c/peer.c) passes the exact golden comparison, and its --broken build
  fails it at every N >= 2;
* a peer that crashes, prints garbage, answers the wrong shape or hangs gives a typed error naming the command, the
  request and the tail of the peer's stderr, and no peer is left running.
"""
from __future__ import annotations

import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gemma_oracle
from gemma_oracle.engine.adapters.process_engine import (PeerCrashedError, PeerError, PeerProtocolError,
                                                         PeerRequestError, PeerShapeError, PeerTimeoutError,
                                                         ProcessEngine)
from gemma_oracle.engine.adapters.stdio_wire import array_specs, decode_arrays, encode
from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.engine.protocol import TopKLogprobs, batch_record, describe_engine, prefill_batch_of
from gemma_oracle.engine.registry import make_engine
from gemma_oracle.oracles.compare import FLOAT64_POLICY, exact
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched, greedy_forced_tokens, single_user_logits

pytestmark = pytest.mark.synthetic

REPO = Path(__file__).resolve().parents[1]
C_PEER = REPO / "examples" / "stdio-peer-c" / "peer.c"
FAULT_PEER = Path(__file__).with_name("stdio_fault_peer.py")
SERVE = [sys.executable, "-m", "gemma_oracle.engine.adapters.stdio_serve", "--engine", "numpy"]
PROMPTS = [[2, 11, 5], [2, 7], [2, 30, 30, 1, 4], [2], [2, 19, 3, 8]]  # unequal lengths: rows sit at unequal positions
T = 3

STARTED: list[int] = []  # every peer pid a test started, checked gone at the end of the module


def _env() -> dict[str, str]:
    """The children import the gemma_oracle this test imports (a worktree on PYTHONPATH, not the editable main)."""
    root = str(Path(gemma_oracle.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _engine(model, cmd, timeout=30) -> ProcessEngine:
    eng = ProcessEngine(model, cmd, timeout=timeout, env=_env())
    STARTED.append(eng.pid)
    return eng


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def model(synthetic_gguf):
    return synthetic_gguf("keqv-mixed", "f32")


@pytest.fixture(scope="module")
def local(model):
    return make_engine("numpy", model)


@pytest.fixture(scope="module")
def remote(model):
    with _engine(model, SERVE) as eng:
        yield eng


@pytest.fixture(scope="module", autouse=True)
def nothing_left_running():
    yield
    gc.collect()
    assert STARTED and [p for p in STARTED if not _gone(p)] == []


# ------------------------------------------------------------------------------------- the wire format
def test_the_wire_format_is_little_endian_and_checks_its_byte_count():
    big = np.arange(6, dtype=">f4").reshape(2, 3) - 2.5  # a big-endian array goes out little-endian
    msg = encode({"id": 3, "op": "decode", "ok": True}, [("logits", big)])
    head, _, payload = msg.partition(b"\n")
    header = json.loads(head)
    assert header["arrays"] == [{"name": "logits", "dtype": "float32", "shape": [2, 3]}] and header["nbytes"] == 24
    assert payload == big.astype("<f4").tobytes()
    back = decode_arrays(array_specs(header), payload)["logits"]
    assert back.dtype == np.float32 and np.array_equal(back, big)
    with pytest.raises(ValueError, match="'nbytes' is 20 but the arrays"):
        array_specs({**header, "nbytes": 20})
    with pytest.raises(ValueError, match="expected a string 'name' and 'dtype' one of float32"):
        array_specs({"arrays": [{"name": "logits", "dtype": "float16", "shape": [3]}], "nbytes": 6})


# ------------------------------------------------------------------------------------- the numpy peer: transparent
def test_the_served_numpy_engine_is_bitwise_the_in_process_one(remote, local):
    assert remote.vocab_size == local.vocab_size and remote.name == f"process:{local.name}"
    for prompt in PROMPTS[:3]:
        forced = greedy_forced_tokens(local, prompt, T)
        a, b = single_user_logits(remote, prompt, forced), single_user_logits(local, prompt, forced)
        assert a.dtype == b.dtype == np.float64
        assert a.view(np.uint64).tobytes() == b.view(np.uint64).tobytes()  # bits, not values: -0.0 and NaNs too


@pytest.mark.parametrize("n", [1, 2, 5])
def test_the_golden_run_through_the_process_is_the_in_process_one(remote, local, n):
    forced = [greedy_forced_tokens(local, p, T) for p in PROMPTS[:n]]
    # the float64 engine passes its own policy through the process boundary ...
    golden_single_vs_batched(remote, PROMPTS[:n], forced, policy=FLOAT64_POLICY).assert_passed()
    # ... and under exact() it gives the very verdicts and numbers it gives in-process: the numpy engine's batched
    # matmul reorders float64 sums with N (a few ulps), and the transport neither hides nor adds a single bit
    through = golden_single_vs_batched(remote, PROMPTS[:n], forced, policy=exact())
    inside = golden_single_vs_batched(local, PROMPTS[:n], forced, policy=exact())
    assert through.keys == inside.keys and through.failing_keys == inside.failing_keys
    assert [(c.max_abs, c.nmse, c.cand_argmax) for c in through.comparisons] == \
           [(c.max_abs, c.nmse, c.cand_argmax) for c in inside.comparisons]
    if n == 1:
        through.assert_passed()  # one row alone is the single-user run


def test_describe_prefill_batch_and_last_batch_pass_through(remote, local):
    info = describe_engine(remote)
    ours = describe_engine(local)
    assert {k: info[k] for k in ours if k != "name"} == {k: v for k, v in ours.items() if k != "name"}
    assert info["name"] == remote.name and info["peer_name"] == local.name
    assert info["process"]["protocol"] == 1 and "stdio_serve" in info["process"]["cmd"]

    assert prefill_batch_of(remote) is not None
    prompts = [[2, 11, 5, 9, 9, 9, 9, 9, 9, 1], [2, 7]]  # 10 tokens: two prefill chunks of 8
    got = remote.prefill_batch([remote.new_sequence() for _ in prompts], prompts)
    want = local.prefill_batch([local.new_sequence() for _ in prompts], prompts)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert batch_record(remote) == batch_record(local) and batch_record(remote).min_forward_calls == 2
    seqs = [remote.new_sequence() for _ in range(3)]
    for s, p in zip(seqs, PROMPTS):
        remote.prefill(s, p)
    remote.decode(seqs, [1, 2, 3])
    rec = batch_record(remote)
    assert (rec.rows, rec.forward_calls, rec.batched) == (3, 1, True)


def test_an_error_answer_is_typed_and_the_session_goes_on(remote, local):
    seq = remote.new_sequence()
    remote.prefill(seq, [2, 3])
    with pytest.raises(PeerRequestError) as err:
        remote.decode([seq], [remote.vocab_size + 7])  # no such token: the engine fails, the peer says so
    assert err.value.error_type == "engine_error" and err.value.request == "decode"
    assert "decode" in str(err.value) and "stdio_serve" in str(err.value)
    assert "Traceback" in err.value.stderr_tail  # the peer logged the engine's traceback; we quote it
    assert np.array_equal(remote.prefill(remote.new_sequence(), [2, 3]), local.prefill(local.new_sequence(), [2, 3]))
    with pytest.raises(TypeError, match="not a sequence of this engine"):
        remote.decode([local.new_sequence()], [1])


def test_the_process_engine_through_the_registry(model, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the registry passes no env: the child inherits ours
    eng = make_engine(f'process:cmd="{shlex.join(SERVE)}",timeout=20', model)
    STARTED.append(eng.pid)
    with eng:
        assert isinstance(eng, ProcessEngine) and eng.vocab_size == 512 and eng._channel.timeout == 20
    with pytest.raises(GemmaOracleError, match="needs cmd"):
        make_engine("process", model)


def test_top_k_answers_come_back_as_top_k(model, local):
    with _engine(model, [sys.executable, str(FAULT_PEER), "topk"]) as eng:
        assert eng.output_topk == 5
        seq = eng.new_sequence()
        got = eng.prefill(seq, [2, 11, 5])
        want = TopKLogprobs.from_logits(local.prefill(local.new_sequence(), [2, 11, 5]), 5)
        assert isinstance(got, TopKLogprobs) and np.array_equal(got.ids, want.ids)
        assert np.array_equal(got.logprobs, want.logprobs)
        assert eng.decode([seq], [4]).shape == (1, 5)


# ------------------------------------------------------------------------------------- a peer in C
@pytest.fixture(scope="module")
def c_peer(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("needs a C compiler (cc, gcc or clang on PATH) to build examples/stdio-peer-c/peer.c")
    exe = tmp_path_factory.mktemp("c-peer") / "peer"
    proc = subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-o", str(exe), str(C_PEER)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr  # builds, and without a warning
    return exe


def _golden_sweep(eng):
    """N -> the exact golden run at N (each with the last batch record right after it)."""
    out = {}
    for n in range(1, len(PROMPTS) + 1):
        forced = [greedy_forced_tokens(eng, p, T) for p in PROMPTS[:n]]
        out[n] = golden_single_vs_batched(eng, PROMPTS[:n], forced, policy=exact()), batch_record(eng)
    return out


def test_the_c_peer_passes_the_exact_golden_run(c_peer):
    with _engine("/the/toy/reads/no/model.gguf", [str(c_peer)]) as eng:
        assert (eng.name, eng.vocab_size) == ("process:toy-c", 256)
        assert prefill_batch_of(eng) is None and eng.output_topk == 0  # not announced: not offered
        for n, (result, record) in _golden_sweep(eng).items():
            result.assert_passed()
            assert len(result.comparisons) == n * (T + 1)
            assert record.rows == n and record.batched  # the batched steps were one pass each
        gc.collect()  # every handle of the sweep is garbage now: the next request frees them on the peer
        assert describe_engine(eng)["live_sequences"] == 0
        with pytest.raises(PeerRequestError) as err:  # the C peer's error answer, typed on our side
            eng.prefill(eng.new_sequence(), [256])
        assert err.value.error_type == "bad_request" and "token id outside the vocabulary" in str(err.value)
        assert eng.prefill(eng.new_sequence(), [255]).dtype == np.float32  # the session goes on, in float32
        assert "toy engine" in eng.stderr_tail()


def test_the_broken_c_peer_fails_the_exact_golden_run_at_every_n_from_2(c_peer):
    with _engine("/the/toy/reads/no/model.gguf", [str(c_peer), "--broken"]) as eng:
        results = {n: result for n, (result, _) in _golden_sweep(eng).items()}
    assert results[1].passed  # alone, a row is its own longest row: nothing to see
    for n in range(2, len(PROMPTS) + 1):
        res = results[n]
        assert not res.passed, res.summary()
        # step 0 (prefill) is per sequence and clean; every decode step of a row shorter than the longest fails
        assert {step for _, step, _ in res.failing_keys} == set(range(1, T + 1))
        longest = max(len(p) for p in PROMPTS[:n])
        assert {seq for seq, _, _ in res.failing_keys} == {i for i in range(n) if len(PROMPTS[i]) < longest}
        with pytest.raises(AssertionError, match="FAILED"):
            res.assert_passed()


# ------------------------------------------------------------------------------------- peers that misbehave
def _fault(model, mode, timeout=20) -> ProcessEngine:
    return _engine(model, [sys.executable, str(FAULT_PEER), mode], timeout=timeout)


def _two_steps(eng):
    seqs = [eng.new_sequence() for _ in range(2)]
    for s, p in zip(seqs, PROMPTS):
        eng.prefill(s, p)
    eng.decode(seqs, [1, 2])
    eng.decode(seqs, [3, 4])


@pytest.mark.parametrize("mode, error, says, last_words", [
    ("crash", PeerCrashedError, "closed its stdout before answering (exit status 3)", "crashing in decode #2 with 2 rows"),
    ("garbage", PeerProtocolError, "expected a JSON header line, got b'Loading model... done", "about to print garbage"),
    ("shape", PeerShapeError, "expected array 'logits' (float32 or float64) of shape (2, 512), got {'logits': ('float64', (2, 511))}",
     "dropping the last logit"),
    ("hang", PeerTimeoutError, "no answer within 1.5 s (the peer was killed)", "hanging in decode"),
])
def test_a_misbehaving_peer_gives_a_typed_error_with_its_stderr(model, mode, error, says, last_words):
    eng = _fault(model, mode, timeout=1.5 if mode == "hang" else 20)
    with pytest.raises(error) as err:
        _two_steps(eng)
    e = err.value
    assert isinstance(e, PeerError) and isinstance(e, GemmaOracleError)
    assert e.request == "decode" and str(FAULT_PEER) in e.cmd
    assert says in str(e), str(e)
    assert last_words in e.stderr_tail and last_words in str(e)
    assert _gone(eng.pid) or eng._channel.proc.poll() is not None  # the session is over: the peer is gone
    with pytest.raises(PeerCrashedError, match="no longer usable"):  # and says so, not hangs, on the next call
        eng.new_sequence()
    eng.close()
    assert _gone(eng.pid)


def test_a_peer_that_dies_at_start_names_hello_and_its_last_words(tmp_path):
    script = "import sys; sys.stderr.write('cannot open the model: no such file\\n'); sys.exit(4)"
    with pytest.raises(PeerCrashedError) as err:
        ProcessEngine(tmp_path / "missing.gguf", [sys.executable, "-c", script], timeout=20)
    assert err.value.request == "hello" and "exit status 4" in str(err.value)
    assert "cannot open the model" in err.value.stderr_tail
    with pytest.raises(PeerCrashedError, match="could not start the peer"):
        ProcessEngine(tmp_path / "m.gguf", str(tmp_path / "no-such-peer"), timeout=5)


def test_a_peer_of_another_protocol_version_is_refused(model):
    script = ("import sys, json; req = json.loads(sys.stdin.readline()); "
              "print(json.dumps({'id': req['id'], 'op': 'hello', 'ok': True, 'protocol': 2, 'name': 'future', "
              "'vocab_size': 8}), flush=True); sys.stdin.readline()")
    with pytest.raises(PeerProtocolError, match="speaks protocol version 2, this client speaks 1") as err:
        ProcessEngine(model, [sys.executable, "-c", script], timeout=20)
    assert err.value.request == "hello"


def test_close_shuts_the_peer_down_cleanly(model):
    eng = _engine(model, SERVE)
    assert eng.close() == 0  # it left on `shutdown`, it was not killed
    assert _gone(eng.pid)
