"""The streaming building blocks of Mimi, public and shared with the Moshi LM (``duplex.model``): explicit
per-slot state, causal convolutions, SEANet, the transformer with its ring KV cache, RoPE, the quantizer, and the
CPU kernels of the hot path."""
