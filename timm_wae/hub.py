"""The Hugging Face Hub: push a saved model folder, or a model; the download helpers (``download.py``) and the
backbone builder (``surgery/backbone.py``) are importable from here as before.

Weights on disk (the folder layout, the strict checks) are ``weights.py``; what a user may name as a model
is ``model_spec.py``. Nothing inside the package imports this module: it is a top floor.
"""
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from torch import nn

from .download import (  # noqa: F401
    _REACHABLE,
    HubUnavailableError,
    before_download,
    hub_reachable,
    offline_overlay,
    tagged_name,
    translate_hub_errors,
)
from .model_spec import load_model
from .surgery.backbone import create_backbone
from .weights import WEIGHTS_NAME, WeightsError, load_weights, save_pretrained

__all__ = ['HubUnavailableError', 'hub_reachable', 'before_download', 'translate_hub_errors', 'offline_overlay',
           'create_backbone', 'push_to_hub', 'push_model',
           # moved to weights.py and model_spec.py; importable from here as before
           'WeightsError', 'save_pretrained', 'load_weights', 'create_model']


def push_to_hub(folder: Union[str, Path], repo_id: str, commit_message: str = 'Upload timm_wae model',
                private: bool = False, token: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload a folder made by ``save_pretrained``; returns the commit URL."""
    from huggingface_hub import HfApi
    folder = Path(folder)
    if not (folder / 'config.json').is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f'{str(folder)!r} is not a saved model folder (needs config.json and {WEIGHTS_NAME})')
    api = HfApi(token=token, library_name='timm_wae')
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message)
    return info.commit_url


def push_model(model: nn.Module, repo_id: str, model_card: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> str:
    """save_pretrained into a temporary folder, then push_to_hub."""
    from tempfile import TemporaryDirectory
    with TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, dict(model_card or {}, repo_id=repo_id))
        return push_to_hub(tmp, repo_id, **kwargs)


def create_model(spec: str, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """Deprecated name of ``timm_wae.load_model`` (it shadowed ``timm.create_model``, whose default is
    ``pretrained=False``)."""
    warnings.warn('timm_wae.hub.create_model is deprecated: use timm_wae.load_model (the same arguments)',
                  DeprecationWarning, stacklevel=2)
    return load_model(spec, pretrained=pretrained, **kwargs)
