"""The comparisons: the only place that compares numbers.

`metrics` (NMSE, max |d|, KL, argmax and top-k agreement, margins, a NaN/inf screen that runs first), `compare`
(policies and `check_logits_close`, `first_divergence`), `single_vs_batched` (the golden comparison: every
batched row against its own single-user run, and the batch probe), `field` (tests from the field: the needle,
changing composition, decode vs prefill, determinism, batched prefill, each a GoldenResult like the sweep),
`prefill_cache` (prefill with a per-sequence cache against plain prefill), `parity` (our reference against
llama.cpp); what an engine must offer to be put through them is `gemma_oracle.engine.protocol`. May import
`engine`; never harness or reports.
"""
