"""Pure numpy references: dequantizers bitwise equal to gguf-py for every GGML type the loader reads
(`dequant`), the K-quant quantizers the synthetic fixtures are written with (`quantize`), and Q8_1 (`q8_1`),
the activation format of decode-MMQ. float64 in, float64 out; no CuPy.
"""
