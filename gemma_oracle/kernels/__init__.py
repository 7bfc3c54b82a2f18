"""CUDA kernels launched through CuPy and their numpy references.

Each family is a source in `cuda/` (`name.cu`, shared arithmetic in `*.cuh`) beside a thin launcher `name.py`
that checks shapes, dtypes and contiguity on the host and computes the launch geometry; compile options live
in `_compile.py` alone, host-side argument checks in `_checks.py`, and every launch goes through `launch.py`
(programmatic dependent launch on sm_90, GEMMA_ORACLE_PDL=0 turns it off: the next kernel of a step launches while
this one ends). `reference/` holds the pure numpy (de)quantizers the GPU kernels and the float64 engine are checked against. Imports nothing of gemma_oracle
outside this package.
"""
