"""Backbone surgery: the quarter-width IH branch, the widened first conv, the released VGG, and the probes
that check at construction that what was built runs."""
from .adapter import ClassifierAdapter, adapt_classifier
from .probe import ShrinkError, check_runs, feature_layout, fit_backbone, il_sizes, probe_backbone, run_named
from .shrink import shrink_width
from .vgg import ceil_mode_pooling, released_vgg
from .widen import widen_input

__all__ = ['ShrinkError', 'ClassifierAdapter', 'adapt_classifier', 'shrink_width', 'widen_input', 'released_vgg', 'ceil_mode_pooling',
           'fit_backbone', 'probe_backbone', 'il_sizes', 'feature_layout', 'check_runs', 'run_named']
