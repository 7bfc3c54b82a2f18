"""The golden suites as data, shared by pytest, `gemma-oracle oracle` and the nightly so all run the same
comparisons: `inputs` (input plans: prompt lengths, decode steps and batch sizes derived from a model's config and
the engines' constants, so the inputs cross every window, ring, cache-growth and split-KV boundary and every route
switch point; `make_sequences` turns lengths into tokens), `synthetic` (every preset x quant variant x plan x N, with
its policy) and `real` (one row per real model: marker, presence check, batch sizes), and `planted` (batching bugs planted in
the reference engine, each policy in use run against every one of them: the catch table).
"""
