"""Outside engines run beside ours: llama.cpp on the CPU through the `parity` extra's xllamacpp (`llamacpp`,
which runs it in a child process, `llamacpp_worker`, so that an abort in llama.cpp becomes a typed error).
New outside engines (served, other languages) go here, one module per thing they talk to. `broken` is the control:
our reference engine with a RoPE batching bug planted on purpose (`--engine broken-rope`), which the oracle must
fail.
"""
