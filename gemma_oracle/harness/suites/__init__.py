"""The golden suites as data, shared by pytest, `gemma-oracle oracle` and the nightly so all run the same
comparisons: `synthetic` (every preset x quant variant x N, with its sequences and policy) and `real` (one row
per real model: marker, presence check, batch sizes).
"""
