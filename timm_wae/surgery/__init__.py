"""Backbone surgery: building the backbone, the quarter-width IH branch, the widened first conv, the released VGG,
and the probes that check at construction that what was built runs."""
from ..util import BackboneError, ShrinkError
from .adapter import ClassifierAdapter, adapt_classifier
from .backbone import create_backbone, fit_backbone
from .probe import check_runs, feature_layout, il_sizes, probe_backbone, run_named
from .shrink import shrink_width
from .vgg import ceil_mode_pooling, released_vgg
from .widen import widen_input

__all__ = ['BackboneError', 'ShrinkError', 'ClassifierAdapter', 'adapt_classifier', 'shrink_width', 'widen_input',
           'released_vgg', 'ceil_mode_pooling', 'create_backbone', 'fit_backbone', 'probe_backbone', 'il_sizes',
           'feature_layout', 'check_runs', 'run_named']
