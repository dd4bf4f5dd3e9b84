"""The training recipes' parts, read by ``recipes/train.py`` (the Accelerate script) and ``timm-wae train``:

* ``config``: the schema (dataclasses), YAML loading and the checks;
* ``stages``: the objective: the table of stages (what each trains, its losses), the model, the loss module;
* ``data``: the ImageFolder pipeline (decoded cache, uint8 augmentation, seeded sampler);
* ``checkpoint``: atomic checkpoints, resume, the saved model of each stage;
* ``progress``: where a stage is, the metric lines and the val pass.

Needs the ``[train]`` extra (accelerate, pyyaml); ``import timm_wae`` does not import it.
"""
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]  # relative paths in configs are relative to this


def resolve(path: Optional[str]) -> Optional[Path]:
    """A config's path, relative to the repository root wherever the run is launched from."""
    return None if path is None else (REPO_ROOT / Path(path).expanduser()).resolve()
