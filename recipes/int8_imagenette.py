"""INT8 by ONNX Runtime post-training static quantization, measured on a trained Imagenette model.

    python recipes/int8_imagenette.py runs/pareto/wae2_stem_s0/stage2/model --calib 256 --json int8.json
    python recipes/int8_imagenette.py MODEL --time-only   # latency alone (an idle machine), no val pass
    python recipes/int8_imagenette.py wae_resnet50 --no-pretrained --time-only --baseline resnet50  # 224 px

1. export the model's inference form (``timm.utils.reparameterize_model``) to ONNX (fp32, dynamic
   batch) and quantize it: QDQ, per-channel int8 weights,
   uint8 activations whose ranges come from ``--calib`` training images (a fixed, seeded choice,
   through the model's own eval transform);
2. top-1 / top-5 error on all of val: PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8;
3. latency of the three side by side in one interleaved run (``timm_wae.bench.benchmark``), and of
   ``--baseline`` (a plain timm model, fp32 eager) when given: every form's speed-up is then against it.

Why ONNX Runtime: it is in the project's ``[export]`` extra already and runs int8 convolutions with
VNNI on this CPU; torchao's PT2E x86 path needs ``torch.compile`` with a C++ toolchain at run
time, and OpenVINO is a further dependency (see docs/deployment.md for what was measured).
"""
import argparse
import json
import tempfile
from pathlib import Path

import timm.data
import timm.utils
import torch

from timm_wae import load_model
from timm_wae.bench import benchmark, format_table, results_as_dicts
from timm_wae.evaluate import eval_folder, evaluate
from timm_wae.export import calibration_batches, onnx_runtime_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('model', help='a model folder (config.json + model.safetensors), or a registered name')
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='random weights (timing a registered architecture); calibration still uses real images')
    p.add_argument('--baseline', help='a timm model name, timed in fp32 eager at the same input size')
    p.add_argument('--data', default='../shared/data/imagenette160', help='ImageFolder root with train/ and val/')
    p.add_argument('--calib', type=int, default=256, help='training images that calibrate the activation ranges')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--time-only', action='store_true', help='skip the val pass')
    p.add_argument('--json', help='write the results here')
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = timm.utils.reparameterize_model(load_model(args.model, pretrained=args.pretrained).eval())
    size = tuple(timm.data.resolve_model_data_config(model)['input_size'])
    with tempfile.TemporaryDirectory(prefix='timm_wae_int8_') as tmp:  # the ONNX files go with it
        measure(args, model, size, Path(tmp))


def measure(args: argparse.Namespace, model: torch.nn.Module, size: tuple, work: Path) -> None:
    """Export, quantize, score and time the forms of ``model``; ``work`` holds their ONNX files."""
    calibration = calibration_batches(model, Path(args.data) / 'train', args.calib, size)
    forms = {'pytorch fp32': model,
             'onnxruntime fp32': onnx_runtime_model(model, work / 'fp32.onnx', size, args.threads, like=model),
             'onnxruntime int8': onnx_runtime_model(model, work / 'int8.onnx', size, args.threads, calibration,
                                                    like=model)}

    accuracy = []
    if not args.time_only:
        val = eval_folder(Path(args.data) / 'val')
        for name, m in forms.items():
            row, = evaluate(m, val, workers=0, progress=False, model_name=name)
            accuracy.append(row)
            print(f"{name}: top-1 err {row['top1_err']:.2f} %, top-5 err {row['top5_err']:.2f} % "
                  f"on {row['count']} images")
    onnx_forms = [n for n in forms if n != 'pytorch fp32']
    reference = 'pytorch fp32'
    if args.baseline:
        reference = f'{args.baseline} fp32'
        forms[reference] = timm.create_model(args.baseline, num_classes=model.num_classes).eval()
    timing = benchmark(forms, {n: None if n == reference else reference for n in forms}, size,
                       batch_sizes=[1, 8], repeats=args.repeats,
                       measure_as={n: 'pytorch fp32' for n in onnx_forms})  # MACs of the network, not of ORT
    print(format_table(timing))
    if args.json:
        Path(args.json).write_text(json.dumps({
            'model': args.model, 'calibration_images': args.calib, 'threads': args.threads,
            'accuracy': accuracy, 'timing': results_as_dicts(timing)}, indent=2))


if __name__ == '__main__':
    main()
