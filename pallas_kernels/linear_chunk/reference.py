"""The spec the kernels must match: the plain-jnp chunked form of decayed linear attention.

S_t = lambda_h S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, per head h, with q, k [B, T, H, D],
v [B, T, H, E], log_decay [H] and an initial state [B, H, D, E]; returns (o, final state) in float32.
"""

from jaxllm.attention.linear.forms import chunked as linear_chunk_reference

__all__ = ["linear_chunk_reference"]
