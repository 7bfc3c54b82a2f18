"""gemma_oracle.oracles.prefill_cache: prefill into a per-sequence cache beside live neighbours vs plain prefill."""
from __future__ import annotations

import pytest

from gemma_oracle.oracles.compare import FLOAT64_POLICY
from gemma_oracle.oracles.prefill_cache import prefill_cache_vs_plain

pytestmark = pytest.mark.synthetic

PROMPT = [2, 17, 40, 99, 123, 7, 64, 200, 31, 5, 77, 150, 9]
OCCUPANTS = [[2, 8, 9, 10], [2, 300, 301]]


@pytest.fixture(scope="module")
def engine(synthetic_gguf):
    from gemma_oracle.engine.engine import GemmaEngine

    return GemmaEngine(synthetic_gguf("g4-12b-mini", "f32"), "numpy64")


class CacheDroppingEngine:
    """A wiring bug the oracle must catch: a prefill that continues a sequence starts it afresh instead."""

    def __init__(self, inner):
        self.inner, self.name, self.vocab_size = inner, "cache-dropping", inner.vocab_size

    def new_sequence(self):
        return self.inner.new_sequence()

    def prefill(self, seq, tokens):
        if seq.length:
            seq.restore(self.inner.new_sequence())
        return self.inner.prefill(seq, tokens)

    def decode(self, seqs, tokens):
        return self.inner.decode(seqs, tokens)


def test_reference_engine_continues_its_cache(engine):
    result = prefill_cache_vs_plain(engine, PROMPT, occupants=OCCUPANTS, split=5, next_token=11, policy=FLOAT64_POLICY)
    assert [c.where for c in result.comparisons] == ["last prompt position (pos 12)", "decode of token 11 (pos 13)"]
    result.assert_passed()


def test_a_prefill_that_drops_the_cache_is_caught(engine):
    result = prefill_cache_vs_plain(CacheDroppingEngine(engine), PROMPT, occupants=OCCUPANTS, split=5, next_token=11,
                                    policy=FLOAT64_POLICY)
    assert [c.passed for c in result.comparisons] == [False, False]
    with pytest.raises(AssertionError, match="per-sequence cache, split 5, 2 neighbours"):
        result.assert_passed()


@pytest.mark.parametrize("split,occupants,message", [(0, OCCUPANTS, "0 < split < 13"), (13, OCCUPANTS, "0 < split < 13"),
                                                     (5, [], "at least one occupant")])
def test_misuse_is_a_value_error(engine, split, occupants, message):
    with pytest.raises(ValueError, match=message):
        prefill_cache_vs_plain(engine, PROMPT, occupants=occupants, split=split, next_token=11, policy=FLOAT64_POLICY)
