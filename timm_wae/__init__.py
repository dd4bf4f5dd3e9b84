"""timm_wae: the Wavelet-like Auto-Encoder (Chen et al., AAAI 2018) as a timm plugin.

``import timm_wae`` registers the ``wae_*`` models with timm (and torchvision).
"""
from .front_ends import DWT97, FrontEnd, TransformLoss, WaveletLikeAutoEncoder, check_image, create_front_end
from .models import HUB_ORG, released_vgg
from .shrink import ShrinkError, shrink_width
from .wrapper import WAEOutput, WAEWrapper

__version__ = '0.2.0'

from . import bench, hub
from .torchvision_registry import register_torchvision_models

register_torchvision_models()
