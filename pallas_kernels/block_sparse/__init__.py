"""Block-sparse flash attention: tables of key blocks per query block, reference, kernels, ops."""
