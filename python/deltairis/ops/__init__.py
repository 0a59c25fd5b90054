"""Fused ops: one public function per op, its pure-PyTorch reference ``*_ref``, and a dispatcher.

See :mod:`deltairis.ops._dispatch` for how the backend is chosen.
"""

from deltairis.ops._dispatch import (
    BACKENDS,
    interpreter_enabled,
    kernels_switched_off,
    requested_backend,
    switch_off_kernel,
    triton_available,
)
from deltairis.ops.attention import attention, attention_kvcache, attention_kvcache_ref, attention_ref
from deltairis.ops.groupnorm import group_norm_silu, group_norm_silu_ref
from deltairis.ops.sampling import counter_uniform, sample_categorical, sample_categorical_ref
from deltairis.ops.twohot import symexp, symlog, two_hot, twohot_expectation, twohot_expectation_ref

__all__ = [
    "BACKENDS",
    "attention",
    "attention_kvcache",
    "attention_kvcache_ref",
    "attention_ref",
    "counter_uniform",
    "group_norm_silu",
    "group_norm_silu_ref",
    "interpreter_enabled",
    "kernels_switched_off",
    "requested_backend",
    "sample_categorical",
    "sample_categorical_ref",
    "switch_off_kernel",
    "symexp",
    "symlog",
    "triton_available",
    "two_hot",
    "twohot_expectation",
    "twohot_expectation_ref",
]
