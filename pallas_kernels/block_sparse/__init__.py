"""Block-sparse flash attention: block tables, reference, XLA gather path, Triton and Mosaic
kernels, and one entry point (``api.block_sparse_attention``)."""

# The kernels follow jaxllm's visibility rule (jaxllm.attention.masks), and jaxllm's attention
# methods call these kernels. Loading jaxllm.attention first makes either entry point import
# cleanly: its methods then find this package's modules unloaded rather than half-loaded.
import jaxllm.attention  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import
