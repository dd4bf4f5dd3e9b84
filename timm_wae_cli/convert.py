"""``timm-wae convert``: a trained network into a faster WAE model, fine-tuned with the conversion recipe.

It is ``timm-wae train convert`` with the network as both the backbone to convert and the
distillation teacher (recipes/configs/convert.yaml says why and what the fine-tune does).
"""
import argparse
from pathlib import Path

from . import common, train


def add_parser(sub: argparse._SubParsersAction, fmt: type) -> argparse.ArgumentParser:
    p = common.add_command(
        sub, fmt, 'convert', help='convert a trained network into a faster WAE2 model (short distilled fine-tune)',
        description='Builds a WAE2 model around the trained NETWORK that starts exactly where the network was '
                    '(its output is the network\'s on the 2x2-pooled image), then fine-tunes it on DIR with '
                    'distillation from NETWORK at full resolution (recipes/configs/convert.yaml; key=value '
                    'overrides as for train). NETWORK: a model folder, a timm name with its pretrained tag, '
                    'a torchvision model with its weights (torchvision:resnet50.IMAGENET1K_V2), an hf-hub: id, or a '
                    'state_dict file, .safetensors or .pth (then pass model.backbone=ARCH, e.g. torchvision:resnet50).',
        examples=['timm-wae convert runs/pareto/lowres128_s0/stage2/model --data ../shared/data/imagenette160 '
                  '--output-dir runs/convert/resnet18 --img-size 160',
                  'timm-wae convert resnet50.a1_in1k --data imagenet/ --output-dir runs/convert/r50 '
                  'model.front_end=wae4 stage2.epochs=1',
                  'timm-wae convert r50.pth --data imagenet/ --output-dir runs/convert/tv_r50 '
                  'model.backbone=torchvision:resnet50'])
    p.add_argument('network', metavar='NETWORK')
    p.add_argument('--data', required=True, metavar='DIR', help='an image folder with train/ and val/ class folders')
    p.add_argument('--output-dir', required=True, metavar='OUT')
    p.add_argument('--img-size', type=int, metavar='PX',
                   help='the converted model\'s input size (data.img_size; its backbone sees half of it). A larger '
                        'size than the network was trained at keeps more of its accuracy: e.g. 160 for a network '
                        'trained at 128 (default: the recipe\'s 128)')
    p.add_argument('overrides', nargs='*', metavar='key=value')
    p.add_argument('--launcher-args', metavar='"ARGS"', help='options for accelerate launch, as one string')
    p.add_argument('--dry-run', action='store_true', help='print the command without running it')
    return p


def run(args: argparse.Namespace) -> int:
    # paths as the user meant them (the recipe reads relative paths from the repository's root)
    network = str(Path(args.network).resolve()) if Path(args.network).exists() else args.network
    overrides = [f'model.backbone_from={network}', f'distill.teacher={network}',
                 f'data.root={Path(args.data).resolve()}', f'output_dir={Path(args.output_dir).resolve()}',
                 *([f'data.img_size={args.img_size}'] if args.img_size else []), *args.overrides]
    return train.run(argparse.Namespace(config='convert', overrides=overrides, launcher_args=args.launcher_args,
                                        dry_run=args.dry_run))
