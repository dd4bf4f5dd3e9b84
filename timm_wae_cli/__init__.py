"""``timm-wae``: benchmark, evaluate, visualise, push and train WAE models and their baselines.

One module per command (``bench``, ``evaluate``, ``visualize``, ``push``, ``train``, ``convert``), each with its
``add_parser`` and its ``run``, as Accelerate's ``commands`` package does. This package lives beside
``timm_wae``, not inside it: ``import timm_wae`` registers models with timm and so imports torch, and
``timm-wae --help``, ``--version`` and argument errors must answer without it. Commands import
``timm_wae`` when they run.

Every command takes the same MODEL specs, so that a WAE model and its plain timm baseline are
measured by the same code: a registered name (``wae_resnet18``, ``resnet50``, with an optional
``.tag``), an ``hf-hub:owner/name`` id, or a local folder in the Hub layout (config.json +
model.safetensors, e.g. a training recipe's output). Models are made by ``timm_wae.load_model``.

User errors (missing data, empty class folder, unknown model, unreadable image, ...) print
``timm-wae: error: ...`` to stderr and exit with status 2, without a traceback (set
``TIMM_WAE_DEBUG=1`` to see one).
"""
import argparse
import sys
from typing import Optional, Sequence

from . import bench, convert, evaluate, push, train, visualize
from .common import PROG, CLIError

COMMANDS = (bench, evaluate, visualize, push, train, convert)

EPILOG = """\
MODEL is a registered timm name (wae_resnet18, wae_vgg16.imagenette, resnet50, ...; list them with
python -c "import timm, timm_wae; print(timm.list_models('wae_*'))"), an hf-hub:owner/name id, or a
local model folder (config.json + model.safetensors, as written by the training recipes).

examples:
  # latency / throughput / MACs of a WAE model against its own backbone, measured in the same run
  timm-wae bench wae_resnet50 --batch-sizes 1,8 --dtypes fp32,bf16 --channels-last both --threads 2
  timm-wae bench wae_vgg16 resnet50 --device cuda --img-size 224 --repeats 50 --json bench.json

  # top-1/top-5 error, clean and with Gaussian noise of variance V (the paper's Table 7)
  timm-wae eval runs/try/stage3/model --data data/imagenette160/val --noise 0,0.01,0.02,0.05,0.1
  timm-wae eval resnet50.a1_in1k --data data/imagenette160/val --max-per-class 50 --json eval.json

  # IL, IH (energy share), reconstruction (PSNR), and the 9/7 DWT beside them (Figures 3 and 4)
  timm-wae visualize runs/try/stage3/model --images a.jpg b.jpg --compare --out figures/
  timm-wae visualize hf-hub:timm-wae/wae_resnet18.imagenette --images a.jpg b.jpg --out fig.png

  # publish a model folder; train with the recipes (accelerate launch recipes/train.py ...)
  timm-wae push runs/try/stage3/model me/wae_resnet18.imagenette
  timm-wae train recipes/configs/smoke.yaml data.max_per_class=4 output_dir=runs/try

  # a trained network into a faster WAE2 model that starts where it was, then a short distilled fine-tune
  timm-wae convert runs/try/stage2/model --data data/imagenette160 --output-dir runs/convert

Run "timm-wae COMMAND --help" for a command's options.
"""


def version() -> str:
    """The installed distribution's version (from ``timm_wae.__version__``, the one source), read
    without importing timm_wae."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed('timm_wae')
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        from timm_wae import __version__
        return __version__


class _Version(argparse.Action):
    """--version, resolved only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f'{PROG} {version()}')
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt, epilog=EPILOG,
        description='Wavelet-like Auto-Encoder (Chen et al., AAAI 2018) models and their timm baselines: '
                    'benchmark, evaluate, visualise, publish, train.')
    parser.add_argument('--version', action=_Version, help="show the program's version number and exit")
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for command in COMMANDS:
        command.add_parser(sub, fmt).set_defaults(run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow train's options (train CONFIG --dry-run a=1); nothing else may
        overrides = all('=' in e and not e.startswith('-') for e in extra)
        if getattr(args, 'command', None) in ('train', 'convert') and overrides:
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f'unrecognized arguments: {" ".join(extra)}')
    if not getattr(args, 'run', None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except CLIError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return 130
