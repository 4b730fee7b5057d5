"""Decayed linear attention: the three forms, feature maps, decay schedules, decode state."""

from jaxllm.attention.linear.decay import lightning_log_decay, retnet_log_decay
from jaxllm.attention.linear.feature_maps import FEATURE_MAPS, feature_map
from jaxllm.attention.linear.forms import FORMS, attend, chunked, parallel, recurrent
from jaxllm.attention.linear.state import LinearState, init_state, prefill, step

__all__ = [
    "FEATURE_MAPS", "FORMS", "LinearState", "attend", "chunked", "feature_map", "init_state",
    "lightning_log_decay", "parallel", "prefill", "recurrent", "retnet_log_decay", "step",
]
