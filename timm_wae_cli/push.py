"""``timm-wae push``: upload a model folder to the Hugging Face Hub.
"""
import argparse
import os
from pathlib import Path

from . import common


def add_parser(sub: argparse._SubParsersAction, fmt: type) -> argparse.ArgumentParser:
    p = common.add_command(
        sub, fmt, 'push', help='upload a model folder to the Hugging Face Hub',
        description='Upload FOLDER (config.json + model.safetensors + README.md) to the Hub repo owner/name '
                    '(created if needed) with timm_wae.hub.push_to_hub. Honours HF_TOKEN and HF_ENDPOINT.',
        examples=['timm-wae push runs/try/stage3/model me/wae_resnet18.imagenette'])
    p.add_argument('folder', metavar='FOLDER')
    p.add_argument('repo_id', metavar='OWNER/NAME')
    p.add_argument('--message', default='Upload timm_wae model', help='commit message')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    return p


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise common.CLIError(f'model folder {args.folder!r} does not exist')
    from timm_wae import hub
    from timm_wae.model_spec import is_repo_id
    from timm_wae.weights import WEIGHTS_NAME
    missing = [f for f in ('config.json', WEIGHTS_NAME) if not (folder / f).is_file()]
    if missing:
        raise common.CLIError(f'model folder {args.folder!r} has no {" and no ".join(missing)} (expected the Hub '
                              f'layout written by timm_wae.weights.save_pretrained or the training recipes)')
    if not is_repo_id(args.repo_id):
        raise common.CLIError(f'invalid repo id {args.repo_id!r}; expected owner/name')
    kwargs = {'private': True} if args.private else {}
    try:
        url = hub.push_to_hub(str(folder), args.repo_id, commit_message=args.message, **kwargs)
    except Exception as e:  # noqa: BLE001 - network / auth failures: a message, not a traceback
        if os.environ.get('TIMM_WAE_DEBUG'):
            raise
        raise common.CLIError(f'push of {args.folder!r} to {args.repo_id!r} failed: {type(e).__name__}: {e}',
                              status=1) from None
    print(url)
    return 0
