"""Registered timm models; importing this package registers them."""
from . import wae2, wae_generic, wae_resnet, wae_vgg  # noqa: F401
from ._factory import HUB_ORG
from .wae_vgg import released_vgg

# the registered families, as timm.list_models patterns (the generic `wae` takes any backbone by name)
FAMILIES = ('wae_*', 'wae2_*', 'wae4_*')
