"""Checkpoints that survive a kill at any moment, their resume, and each stage's saved model."""
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from accelerate import Accelerator
from torch import nn

from ..pretrained import TAGS, tag_of_data
from ..weights import WEIGHTS_NAME, load_weights, save_pretrained
from .progress import Progress

if TYPE_CHECKING:
    from .config import Config

__all__ = ['TRAINER_STATE', 'save_checkpoint', 'load_checkpoint', 'write_json_atomic', 'save_model', 'load_init']

TRAINER_STATE = 'trainer_state.json'  # beside accelerate's files: progress and schedule, plain JSON


def save_checkpoint(folder: Path, accelerator: Accelerator, scheduler, progress: Progress) -> None:
    """``accelerator.save_state`` (model, optimizer, every process's RNG) into folder.tmp, plus the
    progress, the schedule and each process's partial metric sums as JSON; then swapped in with
    os.replace: a kill at any moment leaves either the previous checkpoint or the new one
    (folder.old during the swap). Nothing here is unpickled on resume beyond what
    ``torch.load(weights_only=True)`` allows."""
    tmp, old = folder.with_name(folder.name + '.tmp'), folder.with_name(folder.name + '.old')
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)  # safetensors refuses channels_last weights
    (tmp / f'meters_{accelerator.process_index}.json').write_text(json.dumps(progress.meters))
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps({
            'progress': {k: v for k, v in asdict(progress).items() if k != 'meters'},
            'scheduler': scheduler.state_dict(), 'num_processes': accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(folder: Path, accelerator: Accelerator, scheduler) -> Optional[Progress]:
    """The checkpoint in ``folder`` (or folder.old, if a kill came during the swap), or None."""
    if (folder / 'state.pt').exists():  # not silently restarted: say what it is
        raise ValueError(f'{folder} is a checkpoint of timm_wae 0.1 (state.pt): resume it with that version '
                         f'(git checkout 162fc0a), or delete the folder to restart the stage')
    old = folder.with_name(folder.name + '.old')
    folder = folder if (folder / TRAINER_STATE).exists() else old if (old / TRAINER_STATE).exists() else None
    if folder is None:
        return None
    state = json.loads((folder / TRAINER_STATE).read_text())
    accelerator.load_state(str(folder))
    scheduler.load_state_dict(state['scheduler'])
    progress = Progress(**state['progress'])
    own = folder / f'meters_{accelerator.process_index}.json'
    if state['num_processes'] == accelerator.num_processes and own.exists():
        progress.meters = json.loads(own.read_text())
    else:
        accelerator.print(f'warning: {folder} was written by {state["num_processes"]} process(es); random '
                          f'state and partial metrics are not restored: the run will not match an uninterrupted one')
    return progress


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_model(model: nn.Module, folder: Path, cfg: 'Config', stage: int, classes: List[str],
               dc: Dict[str, Any], results: Dict[str, Any], config_name: str) -> None:
    """The stage's final model in the Hub layout (config.json, model.safetensors, README.md)."""
    model = model.to(memory_format=torch.contiguous_format)  # safetensors refuses channels_last weights
    data_config = {k: dc[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')}
    tmp = folder.with_name(folder.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    card = dict(
        name=f'{config_name} (stage {stage})', dataset=cfg.data.dataset or Path(cfg.data.root or 'synthetic').name,
        license=TAGS[tag].license if (tag := tag_of_data(cfg.data.root)) else 'apache-2.0',
        recipe=dict(config=config_name, stage=stage, stages=cfg.stages, model=asdict(cfg.model),
                    data=asdict(cfg.data), training=asdict(cfg.stage(stage)), seed=cfg.seed),
        results=results,
    )
    save_pretrained(model, tmp, model_card=card, data_config=data_config,
                    pretrained_cfg=dict(data_config, num_classes=len(classes), label_names=list(classes)))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_init(model: nn.Module, path: Path) -> None:
    load_weights(model, path / WEIGHTS_NAME if path.is_dir() else path)
