"""``timm-wae``: benchmark, evaluate, visualise, push and train WAE models and their baselines.

Every subcommand takes the same MODEL specs, so that a WAE model and its plain timm baseline are
measured by the same code: a registered name (``wae_resnet18``, ``resnet50``, with an optional
``.tag``), an ``hf-hub:owner/name`` id, or a local folder in the Hub layout (config.json +
model.safetensors, e.g. a training recipe's output). Models are made by ``timm_wae.hub.create_model``.

User errors (missing data, empty class folder, unknown model, unreadable image, ...) print
``timm-wae: error: ...`` to stderr and exit with status 2, without a traceback (set
``TIMM_WAE_DEBUG=1`` to see one).
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

PROG = 'timm-wae'

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

Run "timm-wae COMMAND --help" for a command's options.
"""


class CLIError(Exception):
    """A user error: reported as ``timm-wae: error: <message>`` with exit status 2."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------- parsing helpers
def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f'expected comma-separated integers >= 1, got {text!r}')
    return values


def _float_list(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f'expected comma-separated variances >= 0, got {text!r}')
    return values


def _str_list(choices: Sequence[str]):
    def parse(text: str) -> List[str]:
        values = [v.strip() for v in text.split(',') if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f'expected a comma-separated subset of {",".join(choices)}, got {text!r}')
        return list(dict.fromkeys(values))
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {value}')
    return value


def _img_size(text: str):
    if text == 'native':
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'native', got {text!r}") from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {value}')
    return value


# ----------------------------------------------------------------------------------- models
def check_model_spec(spec: str) -> str:
    """Fail with a message naming the problem unless ``spec`` can name a model; returns the spec to load."""
    if spec.startswith('hf-hub:'):
        repo = spec[len('hf-hub:'):]
        if repo.count('/') != 1 or not all(repo.split('/')):
            raise CLIError(f'invalid Hub id {spec!r}; expected hf-hub:owner/name')
        return spec
    if spec.startswith('local-dir:'):
        spec = spec[len('local-dir:'):]
        if not Path(spec).is_dir():
            raise CLIError(f'model folder {spec!r} does not exist')
    path = Path(spec)
    if path.is_dir():
        if not (path / 'config.json').is_file():
            raise CLIError(f'model folder {spec!r} has no config.json (expected the Hub layout: config.json + '
                           f'model.safetensors)')
        return spec
    if path.is_file():
        raise CLIError(f'{spec!r} is a file, not a model: give a model name with --checkpoint {spec}, or a model '
                       f'folder (config.json + model.safetensors)')
    import timm
    import timm_wae  # noqa: F401  (registers the wae_* models)
    if not timm.is_model(spec):
        if os.sep in spec or spec.startswith('.') or (os.altsep and os.altsep in spec):
            raise CLIError(f'model folder {spec!r} does not exist')
        import difflib
        close = difflib.get_close_matches(spec, timm.list_models(), n=3, cutoff=0.75)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        raise CLIError(f"unknown model {spec!r}; try `timm.list_models('wae_*')`{hint}, an hf-hub:owner/name id "
                       f"or a model folder")
    if '.' in spec:
        from timm.models import get_pretrained_cfg
        try:
            get_pretrained_cfg(spec)
        except RuntimeError:
            arch, tag = spec.split('.', 1)
            raise CLIError(f"unknown pretrained tag {tag!r} of model {arch!r}; try "
                           f"`timm.list_pretrained('{arch}*')`") from None
    return spec


def load_model(spec: str, pretrained: bool, checkpoint: Optional[str] = None, **kwargs: Any):
    """``hub.create_model`` with the spec checked first and loading failures turned into CLIErrors."""
    spec = check_model_spec(spec)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CLIError(f'checkpoint {checkpoint!r} does not exist')
    from . import hub
    try:
        model = hub.create_model(spec, pretrained=pretrained and checkpoint is None, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        if os.environ.get('TIMM_WAE_DEBUG'):
            raise
        hint = (' (for random weights: --no-pretrained in eval/visualize, no --pretrained in bench; or load '
                'a file with --checkpoint FILE)') if pretrained and not isinstance(e, TypeError) else ''
        raise CLIError(f'could not load model {spec!r}: {e}{hint}') from None
    if checkpoint is not None:
        try:
            hub.load_weights(model, checkpoint)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            if os.environ.get('TIMM_WAE_DEBUG'):
                raise
            raise CLIError(f'could not load checkpoint {checkpoint!r} into {spec!r}: {e}') from None
    return model.eval()


def is_wae_model(model) -> bool:
    """A WAEWrapper-like model: a WAE front end and a backbone to compare it with."""
    return hasattr(model, 'backbone') and hasattr(model, 'front_end_name')


def _device(name: str):
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


def _check_out_parent(path: Optional[str], what: str = '--json') -> None:
    if path and path != '-':
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise CLIError(f'{what} {path!r}: folder {str(parent)!r} does not exist')


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _report(text: str, json_path: Optional[str]) -> None:
    """The human-readable result: stdout, unless ``--json -`` keeps stdout for the JSON alone."""
    print(text, file=sys.stderr if json_path == '-' else sys.stdout)


def _write_json(path: Optional[str], payload: Dict[str, Any]) -> None:
    if not path:
        return
    text = json.dumps(_json_safe(payload), indent=2)
    if path == '-':
        print(text)
    else:
        Path(path).write_text(text + '\n', encoding='utf-8')
        print(f'wrote {path}', file=sys.stderr)


def _environment() -> Dict[str, Any]:
    import platform

    import timm
    import torch
    env = {'torch': torch.__version__, 'timm': timm.__version__, 'python': platform.python_version(),
           'cpu': platform.processor() or platform.machine(), 'threads': torch.get_num_threads()}
    if torch.cuda.is_available():
        env['cuda_device'] = torch.cuda.get_device_name()
    return env


# ----------------------------------------------------------------------------------- bench
def _deployed_forms(args: argparse.Namespace, models: Dict[str, Any], baselines: Dict[str, Optional[str]],
                    input_size: Any):
    """Add the comparisons beyond eager: each WAE model's backbone at the input size of equal MACs
    (--same-macs) and each model's compiled / ONNX Runtime form (--paths), every form compared with
    its backbone in the same form. Returns (sizes by model, same-MACs map, measure-as map, temp dir)."""
    import tempfile

    import timm
    import torch

    from .bench import OnnxRuntimeModel, count_macs, same_macs_size
    sizes = dict(input_size) if isinstance(input_size, dict) else {n: tuple(input_size) for n in models}
    same_macs: Dict[str, str] = {}
    if args.same_macs:
        for spec, arch in list(baselines.items()):
            if arch is None:
                continue
            size = sizes[spec]
            side = same_macs_size(count_macs(models[spec].eval(), size), count_macs(models[arch].eval(), sizes[arch]),
                                  size[-1])
            key = f'{arch} @{side}'
            if key not in models:
                models[key], sizes[key], baselines[key] = \
                    timm.create_model(arch, num_classes=models[spec].num_classes), (size[0], side, side), None
            same_macs[spec] = key
    tmp = tempfile.TemporaryDirectory(prefix='timm_wae_bench_')
    measure_as: Dict[str, str] = {}
    eager = list(models)
    for path in [p for p in args.paths if p != 'eager']:
        for name in eager:
            variant = f'{name} [{path}]'
            if path == 'compile':
                models[variant] = torch.compile(models[name].eval())
            else:
                from .export import export_onnx
                onnx_file = export_onnx(models[name].eval(), Path(tmp.name) / f'{len(measure_as)}.onnx', sizes[name])
                models[variant] = OnnxRuntimeModel(str(onnx_file), torch.get_num_threads())
            sizes[variant], measure_as[variant] = sizes[name], name
            baselines[variant] = f'{baselines[name]} [{path}]' if baselines.get(name) else None
            if name in same_macs:
                same_macs[variant] = f'{same_macs[name]} [{path}]'
    return sizes, same_macs, measure_as, tmp


def cmd_bench(args: argparse.Namespace) -> int:
    import timm
    import torch
    from tqdm import tqdm

    from .bench import benchmark, format_table, results_as_dicts, trust_warnings

    if args.device == 'auto':
        devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    else:
        devices = list(dict.fromkeys(_device(d.strip()) for d in args.device.split(',') if d.strip()))
    _check_out_parent(args.json)
    if 'onnx' in args.paths:
        if args.dtypes != ['fp32'] or args.channels_last != 'off' or devices != ['cpu']:
            raise CLIError('--paths onnx times ONNX Runtime on the CPU in fp32: use it with --device cpu, '
                           '--dtypes fp32 and --channels-last off')
        import importlib.util
        if importlib.util.find_spec('onnxruntime') is None or importlib.util.find_spec('onnxscript') is None:
            raise CLIError('--paths onnx needs the [export] extra: pip install "timm_wae[export]"')
    specs = list(dict.fromkeys(args.models))
    for spec in specs:
        check_model_spec(spec)  # every name before building any model
    if args.threads:
        torch.set_num_threads(args.threads)

    models: Dict[str, Any] = {}
    baselines: Dict[str, Optional[str]] = {}
    for spec in specs:
        model = load_model(spec, pretrained=args.pretrained)
        models[spec] = model
        baselines[spec] = None
        if is_wae_model(model):
            arch = model.backbone.pretrained_cfg.get('architecture')
            if not arch or not timm.is_model(arch):
                print(f'warning: no timm architecture recorded for the backbone of {spec!r}; no speed-up',
                      file=sys.stderr)
                continue
            baselines[spec] = arch
    for spec, arch in list(baselines.items()):
        if arch is not None and arch not in models:
            models[arch] = timm.create_model(arch, num_classes=models[spec].num_classes)
            baselines[arch] = None

    if args.img_size == 'native':  # each model at its own data config's size, a backbone at its WAE model's
        input_size = {s: tuple(timm.data.resolve_model_data_config(models[s])['input_size']) for s in specs}
        input_size.update({arch: input_size[s] for s, arch in baselines.items() if arch and arch not in specs})
    elif args.img_size:
        input_size = (3, args.img_size, args.img_size)
    else:
        input_size = tuple(timm.data.resolve_model_data_config(models[specs[0]])['input_size'])
    channels_last = {'off': [False], 'on': [True], 'both': [False, True]}[args.channels_last]
    input_size, same_macs, measure_as, tmp = _deployed_forms(args, models, baselines, input_size)
    shown = 'each model\'s own size' if len(set(input_size.values())) > 1 else next(iter(input_size.values()))
    print(f'benchmarking {", ".join(models)} at input {shown} on {", ".join(devices)}; '
          f'{torch.get_num_threads()} CPU threads', file=sys.stderr)

    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None  # before timing: not our own threads
    results = []
    for device in devices:
        total = len(args.batch_sizes) * len(args.dtypes) * len(channels_last) * args.repeats
        with tqdm(total=total, desc=f'bench {device}', unit='round', file=sys.stderr, leave=False,
                  disable=args.quiet) as bar:
            results += benchmark(
                models, baselines, input_size, batch_sizes=args.batch_sizes, dtypes=args.dtypes,
                channels_last=channels_last, device=device, warmup=args.warmup, repeats=args.repeats,
                progress=lambda: bar.update(1), same_macs=same_macs, measure_as=measure_as)
    tmp.cleanup()
    _report(format_table(results), args.json)
    untrusted = trust_warnings(results, load, os.cpu_count())
    for w in untrusted:
        print(f'warning: {w}: the speed-up ratios of this run cannot be trusted; run again on an idle machine',
              file=sys.stderr)
    _write_json(args.json, {
        'command': 'bench',
        'settings': {'models': specs, 'baselines': baselines,
                     'input_size': {k: list(v) for k, v in input_size.items()}, 'paths': args.paths,
                     'same_macs': same_macs,
                     'batch_sizes': args.batch_sizes, 'dtypes': args.dtypes, 'channels_last': args.channels_last,
                     'devices': devices, 'threads': torch.get_num_threads(), 'warmup': args.warmup,
                     'repeats': args.repeats, 'pretrained': args.pretrained},
        'environment': _environment(),
        'warnings': untrusted,
        'results': results_as_dicts(results),
    })
    return 0


# ----------------------------------------------------------------------------------- eval
def _check_data(root: str) -> None:
    from .data import check_image_folder
    try:
        check_image_folder(root)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def _image_error(e: BaseException) -> Optional[str]:
    """The message of an UnreadableImageError, also when a DataLoader worker re-raised it as text."""
    from .evaluate import UnreadableImageError
    text = str(e)
    if isinstance(e, UnreadableImageError) or 'cannot read image' in text:
        lines = [ln.strip() for ln in text.splitlines() if 'cannot read image' in ln]
        msg = lines[-1] if lines else text
        prefix = 'UnreadableImageError: '
        return msg[msg.index(prefix) + len(prefix):] if prefix in msg else msg
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .evaluate import LabelMappingError, evaluate, format_rows

    if args.checkpoint and len(args.models) > 1:
        raise CLIError('--checkpoint needs a single MODEL')
    _check_data(args.data)
    _check_out_parent(args.json)
    device = _device(args.device)
    for spec in args.models:
        check_model_spec(spec)
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {'num_classes': args.num_classes} if args.num_classes else {}
    rows: List[Dict[str, Any]] = []
    for spec in args.models:
        model = load_model(spec, pretrained=args.pretrained, checkpoint=args.checkpoint, **kwargs)
        try:
            rows += evaluate(
                model, args.data, noise=args.noise, seed=args.seed, clamp=args.clamp,
                max_per_class=args.max_per_class, batch_size=args.batch_size, workers=args.workers,
                device=device, dtype=args.dtype, img_size=args.img_size, progress=not args.quiet, model_name=spec)
        except Exception as e:  # noqa: BLE001 - user errors only; anything else is re-raised
            msg = _image_error(e)
            if msg is None and isinstance(e, LabelMappingError):
                msg = f'{spec}: {e}'
            if msg is None or os.environ.get('TIMM_WAE_DEBUG'):
                raise
            raise CLIError(msg) from None
    _report(format_rows(rows), args.json)
    _write_json(args.json, {'command': 'eval', 'environment': _environment(), 'rows': rows})
    return 0


# ----------------------------------------------------------------------------------- visualize
def cmd_visualize(args: argparse.Namespace) -> int:
    from .evaluate import UnreadableImageError, read_image
    from .visualize import visualize

    for p in args.images:
        if not Path(p).is_file():
            raise CLIError(f'image {p!r} does not exist')
        try:
            read_image(p)
        except UnreadableImageError as e:
            raise CLIError(str(e)) from None
    if Path(args.out).suffix.lower() not in ('', '.png') and not Path(args.out).is_dir():
        raise CLIError(f'--out {args.out!r}: expected a folder or a .png file')
    _check_out_parent(args.json)
    model = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    if not hasattr(model, 'decompose') or not hasattr(model, 'front_end_name'):
        raise CLIError(f'model {args.model!r} has no WAE front end to visualise (it is not a WAEWrapper); '
                       f"try a wae_* model: `timm.list_models('wae_*')`")
    try:
        rows = visualize(model, args.images, args.out, grid=args.grid, compare=args.compare,
                         img_size=args.img_size, model_name=args.model)
    except UnreadableImageError as e:
        raise CLIError(str(e)) from None
    for r in rows:
        share = '' if r['energy_share_ih'] is None else f"IH energy share {100 * r['energy_share_ih']:.2f}%"
        psnr = '' if r['psnr_db'] is None else f"PSNR {r['psnr_db']:.2f} dB"
        dwt = '' if r['dwt_energy_share'] is None else f"DWT detail share {100 * r['dwt_energy_share']:.2f}%"
        _report(f"{r['image']}: " + ', '.join(t for t in (share, psnr, dwt) if t) + f" -> {r['file']}", args.json)
    _write_json(args.json, {'command': 'visualize', 'model': args.model, 'rows': rows})
    return 0


# ----------------------------------------------------------------------------------- push
def cmd_push(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CLIError(f'model folder {args.folder!r} does not exist')
    missing = [f for f in ('config.json', 'model.safetensors') if not (folder / f).is_file()]
    if missing:
        raise CLIError(f'model folder {args.folder!r} has no {" and no ".join(missing)} (expected the Hub layout '
                       f'written by timm_wae.hub.save_pretrained or the training recipes)')
    if args.repo_id.count('/') != 1 or not all(args.repo_id.split('/')):
        raise CLIError(f'invalid repo id {args.repo_id!r}; expected owner/name')
    from . import hub
    kwargs = {'private': True} if args.private else {}
    try:
        url = hub.push_to_hub(str(folder), args.repo_id, commit_message=args.message, **kwargs)
    except Exception as e:  # noqa: BLE001 - network / auth failures: a message, not a traceback
        if os.environ.get('TIMM_WAE_DEBUG'):
            raise
        raise CLIError(f'push of {args.folder!r} to {args.repo_id!r} failed: {type(e).__name__}: {e}',
                       status=1) from None
    print(url)
    return 0


# ----------------------------------------------------------------------------------- train
def recipes_dir() -> Optional[Path]:
    """The recipes/ folder with train.py: $TIMM_WAE_RECIPES when set, else the one next to the package
    (a source checkout); None when there is none."""
    env = os.environ.get('TIMM_WAE_RECIPES')
    folder = Path(env) if env else Path(__file__).resolve().parent.parent / 'recipes'
    return folder if (folder / 'train.py').is_file() else None


TRAIN_HOWTO = """\
the training recipes (recipes/train.py) were not found next to the timm_wae package; they ship with
the source repository, not with the wheel. To train:
  git clone <the timm_wae repository> && cd timm_wae && pip install -e .
  accelerate launch recipes/train.py recipes/configs/<config>.yaml [key=value ...]
or point TIMM_WAE_RECIPES at a recipes/ folder that has train.py."""


def cmd_train(args: argparse.Namespace) -> int:
    import importlib.util
    recipes = recipes_dir()
    if recipes is None:
        print(TRAIN_HOWTO, file=sys.stderr)
        where = os.environ.get('TIMM_WAE_RECIPES') or Path(__file__).resolve().parent.parent / 'recipes'
        raise CLIError(f'recipes/train.py not found (looked in {str(where)!r}; see above)')
    config = Path(args.config)
    if not config.is_file():
        for cand in (recipes / 'configs' / args.config, recipes / 'configs' / f'{args.config}.yaml'):
            if cand.is_file():
                config = cand
                break
        else:
            available = sorted(p.name for p in (recipes / 'configs').glob('*.y*ml')) if (recipes / 'configs').is_dir() else []
            raise CLIError(f'config {args.config!r} does not exist'
                           + (f'; recipes/configs has: {", ".join(available)}' if available else ''))
    bad = [o for o in args.overrides if '=' not in o and not o.startswith('-')]
    if bad:
        raise CLIError(f'expected key=value overrides after CONFIG, got {bad}')
    if importlib.util.find_spec('accelerate') is None:
        raise CLIError('accelerate is not installed: pip install "timm_wae[train]" (accelerate launches recipes/train.py)')
    spec = importlib.util.spec_from_file_location('timm_wae_recipe', recipes / 'train.py')
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    try:  # the config and every path it names, before the launch (accelerate would print a traceback)
        if hasattr(recipe, 'check_paths'):
            recipe.check_paths(recipe.load_config(config, [o for o in args.overrides if not o.startswith('-')]))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f'{config.name}: {e}') from None
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', *shlex.split(args.launcher_args or ''),
           str(recipes / 'train.py'), str(config), *args.overrides]
    print('accelerate launch ' + ' '.join(shlex.quote(c) for c in cmd[3:]), file=sys.stderr)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


# ----------------------------------------------------------------------------------- parser
def _wrap(text: str) -> str:
    import textwrap
    return textwrap.fill(text, 100)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt, epilog=EPILOG,
        description=_wrap('Wavelet-like Auto-Encoder (Chen et al., AAAI 2018) models and their timm baselines: '
                    'benchmark, evaluate, visualise, publish, train.'))
    from . import __version__
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')

    def model_opts(p: argparse.ArgumentParser, pretrained_default: bool) -> None:
        if pretrained_default:
            p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                           help='random weights instead of the pretrained / folder weights (smoke tests)')
        p.add_argument('--checkpoint', metavar='FILE',
                       help='load these weights (.safetensors, .pth) into MODEL, strictly')

    # bench
    p = sub.add_parser(
        'bench', formatter_class=fmt, help='latency, throughput, params and MACs; WAE speed-up vs its backbone',
        description=_wrap('Time MODELs interleaved call by call (median and p90 after warm-up); each WAE model is '
                    'compared with its own backbone (timm.create_model(backbone architecture)), timed in the '
                    'same loop. Prints a Markdown table; --json writes the same numbers.'),
        epilog='example:\n  timm-wae bench wae_resnet50 --batch-sizes 1,8 --dtypes fp32,bf16 --channels-last both '
               '--json bench.json')
    p.add_argument('models', nargs='+', metavar='MODEL')
    p.add_argument('--batch-sizes', type=_int_list, default=[1, 8], metavar='B,..', help='default: 1,8')
    p.add_argument('--dtypes', type=_str_list(('fp32', 'bf16', 'fp16')), default=['fp32'], metavar='D,..',
                   help='fp32, bf16, fp16 (autocast); default: fp32')
    p.add_argument('--channels-last', choices=('off', 'on', 'both'), default='off',
                   help='memory format of model and input (default: off)')
    p.add_argument('--device', default='auto',
                   help='cpu, cuda, or a comma list; default auto = cpu, plus cuda when present')
    p.add_argument('--threads', type=_positive_int, help='torch.set_num_threads(N)')
    p.add_argument('--img-size', type=_img_size, metavar='N|native',
                   help="input size (default: the first model's data config); 'native': each model at its own "
                        "data config's size (a WAE model's backbone at the WAE model's)"),
    p.add_argument('--repeats', type=_positive_int, default=10, help='timed calls per model and setting (10)')
    p.add_argument('--paths', type=_str_list(('eager', 'compile', 'onnx')), default=['eager'], metavar='P,..',
                   help='deployment forms, each timed beside its backbone in the same form: eager, compile '
                        '(torch.compile), onnx (ONNX Runtime, the [export] extra); default: eager')
    p.add_argument('--same-macs', action='store_true',
                   help="also time each WAE model's backbone at the input size of equal MACs (e.g. resnet50 @128 "
                        "for wae_resnet50 at 224) and report that speed-up")
    p.add_argument('--warmup', type=_non_negative_int, default=3, help='untimed calls first (3)')
    p.add_argument('--pretrained', action='store_true', help='load weights (not needed for timing)')
    p.add_argument('--json', metavar='FILE', help="write the results as JSON ('-' for stdout)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_bench)

    # eval
    p = sub.add_parser(
        'eval', formatter_class=fmt, help='top-1/top-5 error on an ImageFolder, clean and with Gaussian noise',
        description=_wrap("Top-1 and top-5 error on ROOT/<class>/<image> with the model's own eval transform. "
                    '--noise gives VARIANCES V of zero-mean Gaussian noise added to the image in [0, 1] '
                    '(std = sqrt(V)), clamped to [0, 1] unless --no-clamp, then normalised with the data '
                    "config's mean/std: one row per level (the paper's Table 7). The noise of each image is "
                    'fixed by --seed and its index, the same field scaled for every level. Folder classes map to '
                    "model outputs by the model's label names (the recipes record them), else by sorted index "
                    'when the counts match, else by WordNet id for ImageNet models (e.g. Imagenette folders).'),
        epilog='example:\n  timm-wae eval wae_resnet18.imagenette --data data/imagenette160/val '
               '--noise 0,0.01,0.02,0.05,0.1 --json noise.json')
    p.add_argument('models', nargs='+', metavar='MODEL')
    p.add_argument('--data', required=True, metavar='ROOT', help='ImageFolder split: ROOT/<class>/<image>')
    p.add_argument('--noise', type=_float_list, default=[0.0], metavar='V,..',
                   help='noise variances on the [0,1] image, e.g. 0,0.01,0.02,0.05,0.1 (default: 0)')
    p.add_argument('--no-clamp', dest='clamp', action='store_false', help='do not clamp noisy images to [0, 1]')
    p.add_argument('--seed', type=int, default=0, help='noise seed (default 0)')
    p.add_argument('--max-per-class', type=_positive_int, metavar='N', help='first N images of each class')
    p.add_argument('--batch-size', type=_positive_int, default=64)
    p.add_argument('--workers', type=_non_negative_int, default=2)
    p.add_argument('--img-size', type=_positive_int, help="override the data config's input size")
    p.add_argument('--num-classes', type=_positive_int, help='create MODEL with this many classes')
    p.add_argument('--device', default='auto', help='cpu, cuda[:N] or auto (default)')
    p.add_argument('--dtype', choices=('fp32', 'bf16', 'fp16'), default='fp32')
    p.add_argument('--threads', type=_positive_int, help='torch.set_num_threads(N)')
    model_opts(p, pretrained_default=True)
    p.add_argument('--json', metavar='FILE', help="write the rows as JSON ('-' for stdout)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_eval)

    # visualize
    p = sub.add_parser(
        'visualize', formatter_class=fmt, help="IL, IH, reconstruction (and the 9/7 DWT): the paper's Figs. 3-4",
        description=_wrap('Per image: input, IL and IH (each min-max stretched per image), the energy share of IH '
                    '(sum IH^2 / (sum IL^2 + sum IH^2) before standardisation), and the reconstruction with its '
                    'PSNR against the input in [0, 1]; --compare adds the 9/7 DWT cA and |cH|+|cV|+|cD|.'),
        epilog='example:\n  timm-wae visualize wae_resnet18.imagenette --images a.jpg b.jpg --compare --out figures/')
    p.add_argument('model', metavar='MODEL')
    p.add_argument('--images', nargs='+', required=True, metavar='FILE')
    p.add_argument('--out', default='wae_figures', metavar='DIR|FILE.png',
                   help='a folder (one PNG per image, or grid.png) or one .png (all images); default wae_figures/')
    p.add_argument('--grid', action='store_true', help='one figure with a row per image')
    p.add_argument('--compare', action='store_true', help="add the 9/7 DWT's cA and details of the same input")
    p.add_argument('--img-size', type=_positive_int, help="override the data config's input size")
    model_opts(p, pretrained_default=True)
    p.add_argument('--json', metavar='FILE', help="write energy shares and PSNRs as JSON ('-' for stdout)")
    p.set_defaults(func=cmd_visualize)

    # push
    p = sub.add_parser(
        'push', formatter_class=fmt, help='upload a model folder to the Hugging Face Hub',
        description=_wrap('Upload FOLDER (config.json + model.safetensors + README.md) to the Hub repo owner/name '
                    '(created if needed) with timm_wae.hub.push_to_hub. Honours HF_TOKEN and HF_ENDPOINT.'),
        epilog='example:\n  timm-wae push runs/try/stage3/model me/wae_resnet18.imagenette')
    p.add_argument('folder', metavar='FOLDER')
    p.add_argument('repo_id', metavar='OWNER/NAME')
    p.add_argument('--message', default='Upload timm_wae model', help='commit message')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.set_defaults(func=cmd_push)

    # train
    p = sub.add_parser(
        'train', formatter_class=fmt, help='run a training recipe: accelerate launch recipes/train.py CONFIG ...',
        description=_wrap('A thin door to the recipes: runs `accelerate launch <repo>/recipes/train.py CONFIG '
                    '[key=value ...]` (CONFIG may be a path or a name under recipes/configs/). Options for '
                    'train.py itself go after "--".'),
        epilog='examples:\n  timm-wae train recipes/configs/smoke.yaml stage2.epochs=3 output_dir=runs/try\n'
               '  timm-wae train smoke --launcher-args "--num_processes 2 --mixed_precision bf16"')
    p.add_argument('config', metavar='CONFIG')
    p.add_argument('overrides', nargs='*', metavar='key=value')
    p.add_argument('--launcher-args', metavar='"ARGS"', help='options for accelerate launch, as one string')
    p.add_argument('--dry-run', action='store_true', help='print the command without running it')
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow train's options (train CONFIG --dry-run a=1); nothing else may
        if getattr(args, 'command', None) == 'train' and all('=' in e and not e.startswith('-') for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f'unrecognized arguments: {" ".join(extra)}')
    if not getattr(args, 'func', None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
