"""Outside engines behind our engine protocol, one module per thing they talk to.

- llama.cpp as the parity reference (`llamacpp`, in a child process, `llamacpp_worker`, so that an abort in
  llama.cpp becomes a typed error).
- `llamacpp_engine` runs llama.cpp in-process with real batching (N sequences in one llama_decode) and
  `openai_engine` talks to any OpenAI-compatible completions server; both keep a sequence as its token history
  (`history_engine`), read rows with `completion_rows` and the vocabulary with `gguf_vocab`; `llamacpp_server`
  starts a real llama.cpp HTTP server in a child process.
- An engine in any other language runs as a separate program speaking the stdio protocol (docs/stdio-protocol.md):
  `process_engine` is the client side (over `peer_channel`, with the wire format in `stdio_wire`), `stdio_serve`
  serves any registered engine as such a peer.
- `broken` is the deliberately broken control.
"""
