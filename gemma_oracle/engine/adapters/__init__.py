"""Outside engines run beside ours: llama.cpp on the CPU through the `parity` extra's xllamacpp (`llamacpp`,
which runs it in a child process, `llamacpp_worker`, so that an abort in llama.cpp becomes a typed error).
An engine in any other language runs as a separate program speaking the stdio protocol (docs/stdio-protocol.md):
`process_engine` is the client side (over `peer_channel`, with the wire format in `stdio_wire`), `stdio_serve` serves
any registered engine as such a peer. New outside engines (served, other languages) go here, one module per thing
they talk to.
"""
