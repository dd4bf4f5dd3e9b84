"""The WAE model (``wae.py``), what its pretrained cfg says (``cfg.py``) and the registered models
(``registry.py``); importing this package registers them with timm."""
from .registry import FAMILIES
from .wae import WAEOutput, WAEWrapper

__all__ = ['WAEWrapper', 'WAEOutput', 'FAMILIES']
