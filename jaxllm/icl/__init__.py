"""The in-context-learning study library: the shared regression prompt task, the estimators the
studies compare transformers with, and the studies' own small models (linear self-attention, the
attention-only classifier)."""
