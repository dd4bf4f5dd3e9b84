"""``timm-wae eval``: top-1/top-5 error on an ImageFolder, clean and with Gaussian noise (Table 7).
"""
import argparse
import os
from typing import Any, Dict, List, Optional

from . import common


def add_parser(sub: argparse._SubParsersAction, fmt: type) -> argparse.ArgumentParser:
    p = common.add_command(
        sub, fmt, 'eval', help='top-1/top-5 error on an ImageFolder, clean and with Gaussian noise',
        description="Top-1 and top-5 error on ROOT/<class>/<image> with the model's own eval transform. "
                    '--noise gives VARIANCES V of zero-mean Gaussian noise added to the image in [0, 1] '
                    '(std = sqrt(V)), clamped to [0, 1] unless --no-clamp, then normalised with the data '
                    "config's mean/std: one row per level (the paper's Table 7). The noise of each image is "
                    'fixed by --seed and its index, the same field scaled for every level. Folder classes map to '
                    "model outputs by the model's label names (the recipes record them), else by sorted index "
                    'when the counts match, else by WordNet id for ImageNet models (e.g. Imagenette folders).',
        examples=['timm-wae eval wae_resnet18.imagenette --data data/imagenette160/val '
                  '--noise 0,0.01,0.02,0.05,0.1 --json noise.json'])
    p.add_argument('models', nargs='+', metavar='MODEL')
    p.add_argument('--data', required=True, metavar='ROOT', help='ImageFolder split: ROOT/<class>/<image>')
    p.add_argument('--noise', type=common.float_list, default=[0.0], metavar='V,..',
                   help='noise variances on the [0,1] image, e.g. 0,0.01,0.02,0.05,0.1 (default: 0)')
    p.add_argument('--no-clamp', dest='clamp', action='store_false', help='do not clamp noisy images to [0, 1]')
    p.add_argument('--seed', type=int, default=0, help='noise seed (default 0)')
    p.add_argument('--max-per-class', type=common.positive_int, metavar='N', help='first N images of each class')
    p.add_argument('--batch-size', type=common.positive_int, default=64)
    p.add_argument('--workers', type=common.non_negative_int, default=2)
    p.add_argument('--img-size', type=common.positive_int, help="override the data config's input size")
    p.add_argument('--num-classes', type=common.positive_int, help='create MODEL with this many classes')
    p.add_argument('--device', default='auto', help='cpu, cuda[:N] or auto (default)')
    p.add_argument('--dtype', choices=common.DTYPES, default='fp32')
    p.add_argument('--threads', type=common.positive_int, help='torch.set_num_threads(N)')
    common.model_options(p)
    p.add_argument('--json', metavar='FILE', help="write the rows as JSON ('-' for stdout)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')
    return p


def _image_error(e: BaseException) -> Optional[str]:
    """The message of an UnreadableImageError, also when a DataLoader worker re-raised it as text."""
    from timm_wae.evaluate import UnreadableImageError
    text = str(e)
    if isinstance(e, UnreadableImageError) or 'cannot read image' in text:
        lines = [ln.strip() for ln in text.splitlines() if 'cannot read image' in ln]
        msg = lines[-1] if lines else text
        prefix = 'UnreadableImageError: '
        return msg[msg.index(prefix) + len(prefix):] if prefix in msg else msg
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from timm_wae.evaluate import LabelMappingError, eval_folder, evaluate, format_rows

    if args.checkpoint and len(args.models) > 1:
        raise common.CLIError('--checkpoint needs a single MODEL')
    try:  # scanned once, for every model
        folder = eval_folder(args.data)
    except (FileNotFoundError, ValueError) as e:
        raise common.CLIError(str(e)) from None
    common.check_out_parent(args.json)
    common.check_checkpoint(args.checkpoint)
    device = common.device(args.device)
    specs = [common.check_model_spec(spec) for spec in args.models]
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {'num_classes': args.num_classes} if args.num_classes else {}
    rows: List[Dict[str, Any]] = []
    for spec in specs:
        model = common.load_model(spec, pretrained=args.pretrained, checkpoint=args.checkpoint, **kwargs)
        try:
            rows += evaluate(
                model, folder, noise=args.noise, seed=args.seed, clamp=args.clamp,
                max_per_class=args.max_per_class, batch_size=args.batch_size, workers=args.workers,
                device=device, dtype=args.dtype, img_size=args.img_size, progress=not args.quiet, model_name=spec)
        except Exception as e:  # noqa: BLE001 - user errors only; anything else is re-raised
            msg = _image_error(e)
            if msg is None and isinstance(e, LabelMappingError):
                msg = f'{spec}: {e}'
            if msg is None or os.environ.get('TIMM_WAE_DEBUG'):
                raise
            raise common.CLIError(msg) from None
    common.report(format_rows(rows), args.json)
    common.write_json(args.json, {'command': 'eval', 'environment': common.environment(), 'rows': rows})
    return 0
