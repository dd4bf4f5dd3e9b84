"""Layers of a WAE model beyond timm's own: its heads and its input checks."""
from .heads import FlatMlp, FusionHead, is_tracing, join_features, mlp_head_shape
from .input_checks import check_dtype, check_il_size

__all__ = ['FlatMlp', 'FusionHead', 'mlp_head_shape', 'join_features', 'is_tracing', 'check_dtype', 'check_il_size']
