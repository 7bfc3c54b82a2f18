"""A stdio peer that misbehaves on purpose, for tests/test_engine_process.py: our numpy engine served by
gemma_oracle.engine.adapters.stdio_serve, with one fault planted in ``decode`` (or the top-k capability).

    python tests/stdio_fault_peer.py MODE

MODE: crash (exit 3 on the second decode, after a last word on stderr), garbage (a line that is no frame), shape
(one logit short per row), hang (never answers), topk (answers with the top 5 log-probabilities, not logits).
"""
from __future__ import annotations

import os
import sys
import time

from gemma_oracle.engine.adapters.stdio_serve import protocol_stdout, serve
from gemma_oracle.engine.protocol import TopKLogprobs
from gemma_oracle.engine.registry import make_engine


class Faulty:
    def __init__(self, engine, mode: str, out):
        self._engine, self._mode, self._out = engine, mode, out
        self.name, self.vocab_size = f"faulty-{mode}:{engine.name}", engine.vocab_size
        self.output_topk = 5 if mode == "topk" else 0
        self.decodes = 0

    def new_sequence(self):
        return self._engine.new_sequence()

    def _answer(self, logits):
        return TopKLogprobs.from_logits(logits, 5) if self._mode == "topk" else logits

    def prefill(self, seq, tokens):
        return self._answer(self._engine.prefill(seq, tokens))

    def decode(self, seqs, tokens):
        self.decodes += 1
        out = self._engine.decode(seqs, tokens)
        if self._mode == "crash" and self.decodes == 2:
            print(f"fault peer: crashing in decode #{self.decodes} with {len(seqs)} rows", file=sys.stderr, flush=True)
            os._exit(3)
        if self._mode == "garbage":
            print("fault peer: about to print garbage", file=sys.stderr, flush=True)
            self._out.write(b"Loading model... done (this is not a frame)\n")
        if self._mode == "shape":
            print("fault peer: dropping the last logit of each row", file=sys.stderr, flush=True)
            return out[:, :-1]
        if self._mode == "hang":
            print("fault peer: hanging in decode", file=sys.stderr, flush=True)
            time.sleep(600)
        return self._answer(out)


def main() -> int:
    mode = sys.argv[1]
    out = protocol_stdout()
    return serve(lambda model: Faulty(make_engine("numpy", model), mode, out), sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
