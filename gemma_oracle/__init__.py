"""gemma-oracle: an oracle suite for batched decode of Gemma 4 GGUF models.

The data path is the package layout: `engine` (GGUF -> config -> weights -> router -> logits: the float64
numpy reference, the CuPy engine, adapters for outside engines), `kernels` (CUDA sources beside thin CuPy
launchers, and their numpy references), `oracles` (every comparison of numbers: golden single-user vs batched
decode, policies, metrics, parity with llama.cpp), `harness` (fixtures, real models, suites, the bench, the pytest
plugin, the nightly and the `gemma-oracle` CLI) and `reports` (result records, the parquet store, tables, plots,
regressions). A lower layer never imports a higher one: engine and kernels know nothing of oracles, harness or
reports.
"""

# The one source of the version: pyproject.toml reads it (tool.setuptools.dynamic), the CLI prints it.
__version__ = "0.2.0"
