"""timm_wae: the Wavelet-like Auto-Encoder (Chen et al., AAAI 2018) as a timm plugin.

``import timm_wae`` registers the ``wae_*`` models with timm (and torchvision).
"""
from .front_ends import DWT97, FrontEnd, TransformLoss, WaveletLikeAutoEncoder, check_image, create_front_end
from .model_spec import load_model
from .models import WAEOutput, WAEWrapper
from .pretrained import HUB_ORG
from .surgery import BackboneError, ShrinkError, released_vgg, shrink_width
from .weights import save_pretrained

__version__ = '0.2.0'

from . import bench, hub
from .torchvision_registry import register_torchvision_models

register_torchvision_models()
