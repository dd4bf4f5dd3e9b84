"""``timm-wae bench``: latency, throughput, params and MACs of WAE models beside their backbones.
"""
import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from . import common


def add_parser(sub: argparse._SubParsersAction, fmt: type) -> argparse.ArgumentParser:
    p = common.add_command(
        sub, fmt, 'bench', help='latency, throughput, params and MACs; WAE speed-up vs its backbone',
        description='Time MODELs interleaved call by call (median and p90 after warm-up); each WAE model is '
                    'compared with its own backbone (timm.create_model(backbone architecture)), timed in the '
                    'same loop. Prints a Markdown table; --json writes the same numbers.',
        examples=['timm-wae bench wae_resnet50 --batch-sizes 1,8 --dtypes fp32,bf16 --channels-last both '
                  '--json bench.json'])
    p.add_argument('models', nargs='+', metavar='MODEL')
    p.add_argument('--batch-sizes', type=common.int_list, default=[1, 8], metavar='B,..', help='default: 1,8')
    p.add_argument('--dtypes', type=common.str_list(common.DTYPES), default=['fp32'], metavar='D,..',
                   help='fp32, bf16, fp16 (autocast); default: fp32')
    p.add_argument('--channels-last', choices=('off', 'on', 'both'), default='off',
                   help='memory format of model and input (default: off)')
    p.add_argument('--device', default='auto',
                   help='cpu, cuda, or a comma list; default auto = cpu, plus cuda when present')
    p.add_argument('--threads', type=common.positive_int, help='torch.set_num_threads(N)')
    p.add_argument('--img-size', type=common.img_size, metavar='N|native',
                   help="input size (default: the first model's data config); 'native': each model at its own "
                        "data config's size (a WAE model's backbone at the WAE model's)"),
    p.add_argument('--repeats', type=common.positive_int, default=10, help='timed calls per model and setting (10)')
    p.add_argument('--paths', type=common.str_list(('eager', 'reparam', 'compile', 'onnx', 'int8')), default=['eager'],
                   metavar='P,..',
                   help='deployment forms, each timed beside its backbone in the same form: eager, reparam '
                        '(timm.utils.reparameterize_model), compile (torch.compile), onnx (ONNX Runtime, the [export] '
                        'extra), int8 (the reparam form through ONNX Runtime static INT8, calibrated on '
                        '--calib-data); default: eager')
    p.add_argument('--calib-data', metavar='DIR',
                   help='an ImageFolder of real images (e.g. the training split) that calibrates --paths int8')
    p.add_argument('--calib-images', type=common.positive_int, default=128, metavar='N',
                   help='images drawn (seeded) from --calib-data for the activation ranges (128)')
    p.add_argument('--same-macs', action='store_true',
                   help="also time each WAE model's backbone at the input size of equal MACs (e.g. resnet50 @128 "
                        "for wae_resnet50 at 224) and report that speed-up")
    p.add_argument('--warmup', type=common.non_negative_int, default=3, help='untimed calls first (3)')
    p.add_argument('--pretrained', action='store_true', help='load weights (not needed for timing)')
    p.add_argument('--json', metavar='FILE', help="write the results as JSON ('-' for stdout)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')
    return p


def _deployed_forms(args: argparse.Namespace, models: Dict[str, Any], baselines: Dict[str, Optional[str]],
                    input_size: Any):
    """Add the comparisons beyond eager: each WAE model's backbone at the input size of equal MACs
    (--same-macs) and each model's compiled / ONNX Runtime form (--paths), every form compared with
    its backbone in the same form. Returns (sizes by model, same-MACs map, measure-as map, temp dir)."""
    import tempfile

    import timm
    import torch

    from timm_wae.bench import count_macs, same_macs_size
    from timm_wae.export import calibration_batches, onnx_runtime_model
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
            # timm's inference form: folded standardisation, no decoder (and RepVGG-style fusions)
            if path == 'reparam':
                models[variant] = timm.utils.reparameterize_model(models[name].eval())
            elif path == 'compile':
                models[variant] = torch.compile(models[name].eval())
            else:  # onnx: the model as it is; int8: its inference form, quantized
                model = models[name].eval() if path == 'onnx' else timm.utils.reparameterize_model(models[name].eval())
                calibration = calibration_batches(model, args.calib_data, args.calib_images, sizes[name]) \
                    if path == 'int8' else None
                models[variant] = onnx_runtime_model(model, Path(tmp.name) / f'{len(measure_as)}.onnx', sizes[name],
                                                     torch.get_num_threads(), calibration)
            sizes[variant], measure_as[variant] = sizes[name], name
            baselines[variant] = f'{baselines[name]} [{path}]' if baselines.get(name) else None
            if name in same_macs:
                same_macs[variant] = f'{same_macs[name]} [{path}]'
    return sizes, same_macs, measure_as, tmp


def run(args: argparse.Namespace) -> int:
    import timm
    import torch
    from tqdm import tqdm

    from timm_wae.bench import benchmark, format_table, results_as_dicts, trust_warnings
    from timm_wae.models.wae import is_wae_model

    if args.device == 'auto':
        devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    else:
        devices = list(dict.fromkeys(common.device(d.strip()) for d in args.device.split(',') if d.strip()))
    common.check_out_parent(args.json)
    for path in {'onnx', 'int8'} & set(args.paths):
        if args.dtypes != ['fp32'] or args.channels_last != 'off' or devices != ['cpu']:
            raise common.CLIError(f'--paths {path} times ONNX Runtime on the CPU (fp32 input): use it with --device '
                                  'cpu, --dtypes fp32 and --channels-last off')
        import importlib.util
        if importlib.util.find_spec('onnxruntime') is None or importlib.util.find_spec('onnxscript') is None:
            raise common.CLIError(f'--paths {path} needs the [export] extra: pip install "timm_wae[export]"')
    if 'int8' in args.paths and args.calib_data is None:
        raise common.CLIError('--paths int8 needs calibration images: --calib-data DIR (an ImageFolder of real '
                              'images, e.g. the training split); static INT8 takes its activation ranges from them')
    if args.calib_data is not None:  # scanned once, for every model's calibration
        from timm_wae.evaluate import eval_folder
        try:
            args.calib_data = eval_folder(args.calib_data)
        except (FileNotFoundError, ValueError) as e:
            raise common.CLIError(f'--calib-data: {e}') from None
    specs = list(dict.fromkeys(args.models))
    checked = {spec: common.check_model_spec(spec) for spec in specs}  # every name before building any model
    if args.threads:
        torch.set_num_threads(args.threads)

    models: Dict[str, Any] = {}
    baselines: Dict[str, Optional[str]] = {}
    for spec in specs:
        model = common.load_model(checked[spec], pretrained=args.pretrained)
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
    common.report(format_table(results), args.json)
    untrusted = trust_warnings(results)
    for w in untrusted:
        print(f'warning: {w}: the speed-up ratios of this run cannot be trusted; run again on an idle machine',
              file=sys.stderr)
    common.write_json(args.json, {
        'command': 'bench',
        'settings': {'models': specs, 'baselines': baselines,
                     'input_size': {k: list(v) for k, v in input_size.items()}, 'paths': args.paths,
                     'same_macs': same_macs,
                     'batch_sizes': args.batch_sizes, 'dtypes': args.dtypes, 'channels_last': args.channels_last,
                     'devices': devices, 'threads': torch.get_num_threads(), 'warmup': args.warmup,
                     'repeats': args.repeats, 'pretrained': args.pretrained},
        'environment': common.environment(),
        'warnings': untrusted,
        'results': results_as_dicts(results),
    })
    return 0
