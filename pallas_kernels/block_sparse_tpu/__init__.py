"""Block-sparse flash attention for TPU (Mosaic) driven by per-(batch, head, query-block) tables."""
