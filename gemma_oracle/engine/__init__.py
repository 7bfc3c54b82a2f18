"""The decode engines: GGUF file -> config -> weights -> model -> logits, behind one protocol.

`gguf_file` (bounds-checked GGUF open), `config` (GemmaConfig), `inventory` (expected tensors), `model_file`
(load_model), `weights`, `kv_cache`, `model` (the forward pass) and `engine` (GemmaEngine: prefill, batched
decode; `prefill_plan` splits a batched prefill into forwards) make the float64 numpy reference; `gpu_engine` (CupyEngine) runs the same model on the CUDA kernels,
with `routing` (the BatchDecodeMatMul router's rules as data); `backends/` holds the array backends; `factory`
builds an engine by backend name; `adapters/` puts outside engines (llama.cpp) behind the same calls; `errors`
holds the typed errors every layer raises. May import `kernels`; never oracles, harness or reports.
"""
