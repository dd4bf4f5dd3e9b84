"""Checkpoints that survive a kill at any moment, their resume, and each stage's saved model."""
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

import torch
from accelerate import Accelerator
from torch import nn

from ..pretrained import TAGS, tag_of_data
from ..weights import WEIGHTS_NAME, load_weights, save_pretrained
from .progress import Progress

if TYPE_CHECKING:
    from .config import Config

__all__ = ['TRAINER_STATE', 'CheckpointError', 'save_checkpoint', 'load_checkpoint', 'record_config',
           'write_json_atomic', 'save_model', 'load_init']

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


class CheckpointError(ValueError):
    """A checkpoint that cannot resume the run exactly: named, with how to restart the stage on purpose."""


def _restart(folder: Path) -> str:
    return (f'to start this stage afresh on purpose, delete {folder.parent} (its checkpoint and model) and run '
            f'again with resume=true')


def _first_unreadable(folder: Path, files: List[str]) -> Optional[str]:
    """The first of ``files`` in ``folder`` that is missing or that torch.load (weights only) cannot read."""
    from accelerate.utils import load
    for name in files:
        try:
            load(folder / name, map_location='cpu')
        except Exception as e:  # any parser failure: truncated zip, pickle, EOF
            return f'{folder / name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else "unreadable"})'
    return None


def _trainer_state(folder: Path) -> Dict[str, Any]:
    path = folder / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
        missing = {'progress', 'scheduler', 'num_processes'} - set(state)
        if missing:
            raise KeyError(f'no {sorted(missing)}')
        Progress(**state['progress'])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{path} is damaged ({type(e).__name__}: {e}): the run cannot resume exactly; '
                              f'{_restart(folder)}') from None
    return state


def load_checkpoint(folder: Path, accelerator: Accelerator, scheduler) -> Optional[Progress]:
    """The checkpoint in ``folder`` (or folder.old, if a kill came during the swap), or None when the stage
    has none. Resume is exact or refused: a missing or damaged trainer state, model, optimizer or random
    state is a CheckpointError naming the file (Accelerate would restart the stage, raise from deep inside
    torch.load, or log a lost random state at info level and go on)."""
    if (folder / 'state.pt').exists():  # not silently restarted: say what it is
        raise ValueError(f'{folder} is a checkpoint of timm_wae 0.1 (state.pt): resume it with that version '
                         f'(git checkout 162fc0a), or delete the folder to restart the stage')
    old = folder.with_name(folder.name + '.old')
    found = folder if (folder / TRAINER_STATE).exists() else old if (old / TRAINER_STATE).exists() else None
    if found is None:
        if folder.is_dir() or old.is_dir():
            raise CheckpointError(f'{folder} has no {TRAINER_STATE}: the checkpoint is incomplete or damaged and '
                                  f'cannot resume the stage; {_restart(folder)}')
        return None
    folder = found
    state = _trainer_state(folder)
    same_processes = state['num_processes'] == accelerator.num_processes
    rng = f'random_states_{accelerator.process_index}.pkl'
    if same_processes and (bad := _first_unreadable(folder, [rng])):  # Accelerate would go on without it
        raise CheckpointError(f'{bad}: the random state of the checkpoint is damaged, so the run would not match an '
                              f'uninterrupted one; {_restart(folder)}')
    try:
        accelerator.load_state(str(folder))
    except Exception as e:
        bad = _first_unreadable(folder, sorted(p.name for p in folder.glob('*.bin'))) or f'{folder} ({e})'
        raise CheckpointError(f'{bad}: the checkpoint cannot be read (truncated or damaged?); '
                              f'{_restart(folder)}') from None
    scheduler.load_state_dict(state['scheduler'])
    progress = Progress(**state['progress'])
    own = folder / f'meters_{accelerator.process_index}.json'
    if same_processes and own.exists():
        progress.meters = json.loads(own.read_text())
    else:
        accelerator.print(f'warning: {folder} was written by {state["num_processes"]} process(es); random '
                          f'state and partial metrics are not restored: the run will not match an uninterrupted one')
    return progress


# what may change when a run resumes: how it runs, not what it trains
RESUMABLE = ('resume', 'log_every', 'checkpoint_every', 'loader_batches', 'push_to_hub', 'data.workers',
             'data.cache', 'data.cache_dir', 'data.eval_batch_size', 'debug.')


def _flat(values: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
    out = {}
    for k, v in values.items():
        out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
    return out


def record_config(out_dir: Path, values: Dict[str, Any], resume: bool, write: bool = True) -> None:
    """Write the run's config.yaml (``write``: the main process); on resume, keep the one the run was trained
    with and refuse an override that would change what it trains (the schedule, the data, the model): config.yaml
    always describes the models."""
    import yaml
    path = out_dir / 'config.yaml'
    if resume and path.is_file():
        saved, now = _flat(yaml.safe_load(path.read_text()) or {}), _flat(values)
        changed = [f'{k}={now.get(k)!r} (trained with {saved.get(k)!r})' for k in sorted(set(saved) | set(now))
                   if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE)]
        if changed:
            raise CheckpointError(f'resume=true with {"; ".join(changed)}: a resumed run must train what {path} '
                                  f'says. Drop the override to resume, or give it another output_dir to train anew')
        return
    if write:
        path.write_text(yaml.safe_dump(values, sort_keys=False))


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
                    pretrained_cfg=dict(data_config, num_classes=len(classes), label_names=list(classes), tag=tag))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_init(model: nn.Module, path: Path) -> None:
    load_weights(model, path / WEIGHTS_NAME if path.is_dir() else path)
