"""What every ``timm-wae`` command shares: the user-error type, argument types, model specs, output.

Nothing here imports torch at module level: ``timm-wae --help`` and argument errors must answer at
once; the commands import torch and timm_wae when they run.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

PROG = 'timm-wae'
DTYPES = ('fp32', 'bf16', 'fp16')  # timm_wae.evaluate.DTYPES's names, here without importing torch


class CLIError(Exception):
    """A user error: reported as ``timm-wae: error: <message>`` with exit status 2."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status



# ----------------------------------------------------------------------------------- argument types
def int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f'expected comma-separated integers >= 1, got {text!r}')
    return values


def float_list(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f'expected comma-separated variances >= 0, got {text!r}')
    return values


def str_list(choices: Sequence[str]):
    def parse(text: str) -> List[str]:
        values = [v.strip() for v in text.split(',') if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f'expected a comma-separated subset of {",".join(choices)}, got {text!r}')
        return list(dict.fromkeys(values))
    return parse


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'expected an integer >= {minimum}, got {value}')
        return value
    return parse


positive_int, non_negative_int = _int_at_least(1), _int_at_least(0)


def img_size(text: str):
    if text == 'native':
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'native', got {text!r}") from None


def add_command(sub: argparse._SubParsersAction, fmt: type, name: str, help: str, description: str,
                examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand's parser: a one-line ``help`` for ``timm-wae --help``, the wrapped ``description``
    and its example command lines for ``timm-wae NAME --help``."""
    import textwrap
    epilog = ('examples:' if len(examples) > 1 else 'example:') + ''.join(f'\n  {e}' for e in examples)
    return sub.add_parser(name, formatter_class=fmt, help=help, description=textwrap.fill(description, 100),
                          epilog=epilog)


def model_options(p: argparse.ArgumentParser) -> None:
    """--no-pretrained and --checkpoint, for the commands that run a trained model (eval, visualize)."""
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='random weights instead of the pretrained / folder weights (smoke tests)')
    p.add_argument('--checkpoint', metavar='FILE', help='load these weights (.safetensors, .pth) into MODEL, strictly')


# ----------------------------------------------------------------------------------- models
def check_model_spec(spec: str) -> str:
    """Fail with a message naming the problem unless ``spec`` can name a model (``timm_wae.model_spec``, the
    grammar the Python API reads too); returns the spec to load."""
    from timm_wae.model_spec import ModelSpecError, resolve_spec
    from timm_wae.weights import WeightsError
    try:
        resolved = resolve_spec(spec)
    except WeightsError as e:  # an ONNX file
        raise CLIError(f'{e} (bench MODEL --paths onnx,int8 times its ONNX and INT8 forms)') from None
    except ModelSpecError as e:
        raise CLIError(str(e)) from None
    return resolved.name if resolved.kind == 'folder' else spec


def check_checkpoint(checkpoint: Optional[str]) -> None:
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CLIError(f'checkpoint {checkpoint!r} does not exist')


def _cli_words(e: BaseException) -> str:
    """An API error in the CLI's words: the flag, not the keyword argument."""
    return str(e).replace('pass num_classes', 'pass --num-classes')


def load_model(spec: str, pretrained: bool, checkpoint: Optional[str] = None, **kwargs: Any):
    """``timm_wae.load_model`` of a spec that :func:`check_model_spec` returned (and a checkpoint that
    :func:`check_checkpoint` passed), with loading failures turned into CLIErrors."""
    import timm_wae
    from timm_wae.weights import load_weights
    try:
        model = timm_wae.load_model(spec, pretrained=pretrained and checkpoint is None, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        if os.environ.get('TIMM_WAE_DEBUG'):
            raise
        hint = (' (for random weights: --no-pretrained in eval/visualize, no --pretrained in bench; or load '
                'a file with --checkpoint FILE)') if pretrained and not isinstance(e, TypeError) else ''
        raise CLIError(f'could not load model {spec!r}: {_cli_words(e)}{hint}') from None
    if checkpoint is not None:
        try:
            load_weights(model, checkpoint)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            if os.environ.get('TIMM_WAE_DEBUG'):
                raise
            raise CLIError(f'could not load checkpoint {checkpoint!r} into {spec!r}: {_cli_words(e)}') from None
    return model.eval()


def device(name: str):
    import torch
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise CLIError(f'device {name!r} requested but CUDA is not available')
    try:
        torch.device(name)
    except RuntimeError:
        raise CLIError(f'unknown device {name!r}; expected cpu, cuda, cuda:N or auto') from None
    return name


def check_out_parent(path: Optional[str], what: str = '--json') -> None:
    if path and path != '-':
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise CLIError(f'{what} {path!r}: folder {str(parent)!r} does not exist')


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def report(text: str, json_path: Optional[str]) -> None:
    """The human-readable result: stdout, unless ``--json -`` keeps stdout for the JSON alone."""
    print(text, file=sys.stderr if json_path == '-' else sys.stdout)


def write_json(path: Optional[str], payload: Dict[str, Any]) -> None:
    if not path:
        return
    text = json.dumps(json_safe(payload), indent=2)
    if path == '-':
        print(text)
    else:
        Path(path).write_text(text + '\n', encoding='utf-8')
        print(f'wrote {path}', file=sys.stderr)


def environment() -> Dict[str, Any]:
    import platform

    import timm
    import torch
    env = {'torch': torch.__version__, 'timm': timm.__version__, 'python': platform.python_version(),
           'cpu': platform.processor() or platform.machine(), 'threads': torch.get_num_threads()}
    if torch.cuda.is_available():
        env['cuda_device'] = torch.cuda.get_device_name()
    return env

