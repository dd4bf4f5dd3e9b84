"""``timm-wae train``: a door to the training recipes (``accelerate launch recipes/train.py``).
"""
import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

from . import common


def add_parser(sub: argparse._SubParsersAction, fmt: type) -> argparse.ArgumentParser:
    p = common.add_command(
        sub, fmt, 'train', help='run a training recipe: accelerate launch recipes/train.py CONFIG ...',
        description='A thin door to the recipes: runs `accelerate launch <repo>/recipes/train.py CONFIG '
                    '[key=value ...]` (CONFIG may be a path or a name under recipes/configs/). Options for '
                    'train.py itself go after "--".',
        examples=['timm-wae train recipes/configs/smoke.yaml stage2.epochs=3 output_dir=runs/try',
                  'timm-wae train smoke --launcher-args "--num_processes 2 --mixed_precision bf16"'])
    p.add_argument('config', metavar='CONFIG')
    p.add_argument('overrides', nargs='*', metavar='key=value')
    p.add_argument('--launcher-args', metavar='"ARGS"', help='options for accelerate launch, as one string')
    p.add_argument('--dry-run', action='store_true', help='print the command without running it')
    return p


OWN_RECIPES = Path(__file__).resolve().parent.parent / 'recipes'  # a source checkout's, beside the package


def recipes_dir() -> Optional[Path]:
    """The recipes/ folder with train.py: $TIMM_WAE_RECIPES when set, else the one next to the package
    (a source checkout); None when there is none."""
    env = os.environ.get('TIMM_WAE_RECIPES')
    folder = Path(env) if env else OWN_RECIPES
    return folder if (folder / 'train.py').is_file() else None


TRAIN_HOWTO = """\
the training recipes (recipes/train.py) were not found next to the timm_wae package; they ship with
the source repository, not with the wheel. To train:
  git clone <the timm_wae repository> && cd timm_wae && pip install -e .
  accelerate launch recipes/train.py recipes/configs/<config>.yaml [key=value ...]
or point TIMM_WAE_RECIPES at a recipes/ folder that has train.py."""


def run(args: argparse.Namespace) -> int:
    import importlib.util
    recipes = recipes_dir()
    if recipes is None:
        print(TRAIN_HOWTO, file=sys.stderr)
        where = os.environ.get('TIMM_WAE_RECIPES') or OWN_RECIPES
        raise common.CLIError(f'recipes/train.py not found (looked in {str(where)!r}; see above)')
    config = Path(args.config)
    if not config.is_file():
        for cand in (recipes / 'configs' / args.config, recipes / 'configs' / f'{args.config}.yaml'):
            if cand.is_file():
                config = cand
                break
        else:
            configs = recipes / 'configs'
            available = sorted(p.name for p in configs.glob('*.y*ml')) if configs.is_dir() else []
            raise common.CLIError(f'config {args.config!r} does not exist'
                           + (f'; recipes/configs has: {", ".join(available)}' if available else ''))
    bad = [o for o in args.overrides if '=' not in o and not o.startswith('-')]
    if bad:
        raise common.CLIError(f'expected key=value overrides after CONFIG, got {bad}')
    if importlib.util.find_spec('accelerate') is None:
        raise common.CLIError('accelerate is not installed: pip install "timm_wae[train]" '
                              '(accelerate launches recipes/train.py)')
    # the config and every path it names, before the launch (accelerate would print a traceback); the script
    # of another recipes folder ($TIMM_WAE_RECIPES) checks its own config
    cfg = None
    if recipes.resolve() == OWN_RECIPES:
        from timm_wae.training.config import check_paths, load_config
        try:
            cfg = load_config(config, [o for o in args.overrides if not o.startswith('-')])
            check_paths(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise common.CLIError(f'{config.name}: {e}') from None
    cmd = [sys.executable, '-m', 'timm_wae_cli.launch', *shlex.split(args.launcher_args or ''),
           str(recipes / 'train.py'), str(config), *args.overrides]
    print('accelerate launch ' + ' '.join(shlex.quote(c) for c in cmd[3:]), file=sys.stderr)
    if args.dry_run:
        return 0
    status = subprocess.call(cmd)
    if status == 0 and cfg is not None and cfg.mode == 'train':
        print(saved_model_line(cfg))
    return status


def saved_model_line(cfg) -> str:
    """Where the run's last stage saved its model, and its validation error in the docs' unit (top-1/top-5
    error, %)."""
    import json

    from timm_wae.training import resolve
    done = json.loads((resolve(cfg.output_dir) / f'stage{cfg.stages[-1]}' / 'done.json').read_text())
    val = done['val']
    errors = (f': validation top-1 error {100 - val["top1"]:.2f} %, top-5 error {100 - val["top5"]:.2f} % '
              f'({val["images"]} images)') if 'top1' in val else ''
    return f'saved model {done["model"]}{errors}'

