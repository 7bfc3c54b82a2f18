"""Outside engines run beside ours: llama.cpp on the CPU through the `parity` extra's xllamacpp (`llamacpp`,
which runs it in a child process, `llamacpp_worker`, so that an abort in llama.cpp becomes a typed error).
`llamacpp_engine` runs llama.cpp in-process with real batching (N sequences in one llama_decode) and
`openai_engine` talks to any OpenAI-compatible completions server; both keep a sequence as its token history
(`history_engine`), read rows with `completion_rows` and the vocabulary with `gguf_vocab`.
New outside engines (served, other languages) go here, one module per thing they talk to.
"""
