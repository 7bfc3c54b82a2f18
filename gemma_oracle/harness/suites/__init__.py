"""The golden suites as data, shared by pytest, `gemma-oracle oracle` and the nightly so all run the same
comparisons: `synthetic` (every preset x quant variant x N, with its sequences and policy), `real` (one row
per real model: marker, presence check, batch sizes) and `planted` (batching bugs planted in the reference engine,
each policy in use run against every one of them: the catch table).
"""
