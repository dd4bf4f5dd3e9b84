"""torch.hub entry points: ``torch.hub.load('<owner>/<repo>', 'wae_vgg16', pretrained=True)``.

torch.hub runs this file with the repository root on sys.path, so the package imports from the
checkout itself; ``source='local'`` works offline. The entries are the models of the tag table
(``timm_wae.pretrained.MODELS``), as timm's pretrained cfgs and torchvision's Weights enums are.
"""
dependencies = ['torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors', 'pywt']

import timm_wae as _timm_wae  # noqa: E402  (registers the wae_* models)
from timm_wae.pretrained import MODELS as _MODELS  # noqa: E402


def _entry(name: str):
    def load(pretrained: bool = False, tag: str = None, **kwargs):
        return _timm_wae.load_model(f'{name}.{tag}' if tag else name, pretrained=pretrained, **kwargs)

    load.__name__ = name
    load.__doc__ = f'{name}: see timm_wae. tag picks the weights (e.g. "imagenette"); kwargs go to timm.create_model.'
    return load


for _name in _MODELS:
    globals()[_name] = _entry(_name)
