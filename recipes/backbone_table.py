"""Which timm (and torchvision) families WAEWrapper wraps, in both fusion modes: one small model per family, one
forward each.

    python recipes/backbone_table.py                 # prints the markdown table and the coverage
    python recipes/backbone_table.py --page          # also replaces the table in docs/backbones.md
    python recipes/backbone_table.py resnet18 swin_tiny_patch4_window7_224   # only these
    python recipes/backbone_table.py --json a.json NAMES...; ... --merge a.json b.json --page  # in parts
    # torchvision's 20 families: docs/torchvision_backbones.md
    python recipes/backbone_table.py --torchvision --write-doc

Each model is wrapped as ``WAEWrapper(name, num_classes=10, front_end='wae')`` (the paper's branch mode) and
``WAEWrapper(name, num_classes=10, front_end='wae2', ih_fusion='stem')`` (the recommended model), with
random weights, and run once at the WAE model's own ``pretrained_cfg['input_size']``. A model either runs
with logits of shape (1, 10) or is refused with a ``BackboneError`` by the constructor; anything else (another
exception, a failure at the first forward, a wrong shape) is a bug. ``tests/test_backbone_table.py`` (slow
tier) asserts exactly that for every model here.
"""
import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import write_table  # noqa: E402

PAGE, TABLE = Path(__file__).resolve().parents[1] / 'docs' / 'backbones.md', 'backbones'

# one small model per timm module (family); the hard cases picked before the survey are marked
FAMILIES: Dict[str, str] = {
    'beit': 'beit_base_patch16_224',
    'byoanet': 'botnet26t_256',
    'byobnet': 'mobileone_s0',                     # a hard case (MobileOneBlock stem)
    'cait': 'cait_xxs24_224',
    'coat': 'coat_lite_tiny',
    'convit': 'convit_tiny',
    'convmixer': 'convmixer_768_32',
    'convnext': 'convnext_atto',
    'crossvit': 'crossvit_tiny_240',
    'cspnet': 'cs3darknet_focus_s',
    'cspnext': 'cspnext_tiny',
    'davit': 'davit_tiny',
    'deit': 'deit_tiny_patch16_224',
    'densenet': 'densenet121',
    'dla': 'dla46_c',                              # a hard case (fixed-size needs)
    'dpn': 'dpn48b',
    'edgenext': 'edgenext_xx_small',
    'efficientformer': 'efficientformer_l1',       # a hard case
    'efficientformer_v2': 'efficientformerv2_s0',
    'efficientnet': 'efficientnet_b0',
    'efficientvit_mit': 'efficientvit_b0',
    'efficientvit_msra': 'efficientvit_m0',
    'eva': 'eva02_tiny_patch14_224',
    'fasternet': 'fasternet_t0',
    'fastvit': 'fastvit_t8',
    'focalnet': 'focalnet_tiny_srf',
    'gcvit': 'gcvit_xxtiny',
    'ghostnet': 'ghostnetv2_100',
    'hardcorenas': 'hardcorenas_a',
    'hgnet': 'hgnetv2_b0',                         # LearnableAffineBlock
    'hiera': 'hiera_tiny_224',
    'hrnet': 'hrnet_w18_small',                    # a hard case (fixed-size needs)
    'inception_next': 'inception_next_atto',
    'inception_v3': 'inception_v3',
    'levit': 'levit_128s',                         # a hard case
    'mambaout': 'mambaout_femto',
    'maxxvit': 'coatnet_0_rw_224',                 # a hard case
    'metaformer': 'poolformerv2_s12',
    'mlp_mixer': 'mixer_s32_224',
    'mobilenetv3': 'mobilenetv3_small_050',
    'mobilevit': 'mobilevitv2_050',
    'mvitv2': 'mvitv2_tiny',
    'nest': 'nest_tiny',                           # a hard case (pos_embed (1, N, C))
    'nfnet': 'nf_regnet_b0',                       # weight-standardised convs
    'pit': 'pit_ti_224',                           # a hard case
    'pvt_v2': 'pvt_v2_b0',
    'rdnet': 'rdnet_tiny',
    'regnet': 'regnetx_002',
    'repghost': 'repghostnet_050',
    'repvit': 'repvit_m0_9',
    'res2net': 'res2net50_14w_8s',
    'resnest': 'resnest14d',
    'resnet': 'resnet18',
    'resnetv2': 'resnetv2_18',
    'rexnet': 'rexnet_100',                        # a hard case (partial-channel residual adds)
    'selecsls': 'selecsls42b',
    'senet': 'legacy_seresnet18',
    'sequencer': 'sequencer2d_s',
    'shvit': 'shvit_s1',
    'sknet': 'skresnet18',
    'starnet': 'starnet_s050',
    'swiftformer': 'swiftformer_xs',
    'swin_transformer': 'swin_tiny_patch4_window7_224',  # a hard case
    'swin_transformer_v2': 'swinv2_tiny_window8_256',
    'tiny_vit': 'tiny_vit_5m_224',
    'tnt': 'tnt_s_patch16_224',
    'tresnet': 'tresnet_m',
    'twins': 'twins_svt_small',
    'vgg': 'vgg11',
    'visformer': 'visformer_tiny',
    'vision_transformer': 'vit_tiny_patch16_224',
    'vision_transformer_hybrid': 'vit_tiny_r_s16_p8_224',
    'vision_transformer_relpos': 'vit_relpos_small_patch16_224',
    'volo': 'volo_d1_224',
    'vovnet': 'ese_vovnet19b_dw',
    'xception_aligned': 'xception41',
    'xcit': 'xcit_nano_12_p16_224',
}
# one torchvision classifier per family, wrapped through the adapter (``--torchvision``: torchvision:NAME)
TORCHVISION_FAMILIES: Dict[str, str] = {n: f'torchvision:{n}' for n in (
    'alexnet', 'convnext_tiny', 'densenet121', 'efficientnet_b0', 'efficientnet_v2_s', 'googlenet', 'inception_v3',
    'maxvit_t', 'mnasnet0_5', 'mobilenet_v2', 'mobilenet_v3_small', 'regnet_x_400mf', 'resnet18', 'resnext50_32x4d',
    'shufflenet_v2_x0_5', 'squeezenet1_0', 'swin_t', 'vgg11', 'vit_b_16', 'wide_resnet50_2')}
TORCHVISION_DOC = 'docs/torchvision_backbones.md'
# the hard cases picked before the survey (the coverage target is measured on the other families)
HARD_CASES = {'byobnet', 'dla', 'efficientformer', 'hgnet', 'hrnet', 'levit', 'maxxvit', 'nest', 'nfnet', 'pit',
                  'rexnet', 'swin_transformer'}

MODES = {
    'branch': dict(front_end='wae'),
    'stem': dict(front_end='wae2', ih_fusion='stem'),
}
TORCHVISION_HEADER = '''# torchvision backbones

`WAEWrapper` wraps torchvision classifiers (and any classifier with an `nn.Linear` or 1x1-conv head) through
`timm_wae.surgery.ClassifierAdapter`: `WAEWrapper('torchvision:resnet50', num_classes=10)`,
`WAEWrapper(torchvision.models.resnet50(weights=...))` or `WAEWrapper.from_trained(network)`. One model per
torchvision family, random weights, both modes, run once at the WAE model's own input size:
`WAEWrapper('torchvision:NAME', num_classes=10, front_end='wae')` (branch, the paper's) and
`front_end='wae2', ih_fusion='stem'`. "no" is the `ShrinkError` the constructor raises, naming the layer.

Generated by `python recipes/backbone_table.py --torchvision --write-doc` ({date}, {machine}, CPU).

'''


def try_backbone(name: str, mode: str, num_classes: int = 10) -> Tuple[str, str]:
    """('runs', how the IH joins) or ('refused', the BackboneError's message) or ('BUG', what went wrong)."""
    import torch

    from timm_wae import BackboneError, WAEWrapper
    torch.manual_seed(0)
    try:
        model = WAEWrapper(name, num_classes=num_classes, **MODES[mode]).eval()
    except BackboneError as e:
        return 'refused', str(e)
    except Exception as e:  # noqa: BLE001 - the point: name it
        return 'BUG', f'construction: {type(e).__name__}: {e}'
    size = tuple(model.pretrained_cfg['input_size'])
    try:
        with torch.no_grad():
            out = model(torch.randn(1, *size))
    except Exception as e:  # noqa: BLE001
        return 'BUG', f'forward at {size}: {type(e).__name__}: {e}'
    if tuple(out.shape) != (1, num_classes):
        return 'BUG', f'logits of shape {tuple(out.shape)} at {size}'
    if mode == 'stem':
        return 'runs', f'IH in the first conv, {size[1]}x{size[2]} px'
    ratio = sum(p.numel() for p in model.ih_branch.parameters()) / sum(
        p.numel() for n, p in model.backbone.named_parameters() if p.ndim > 1 and 'head' not in n.split('.')[0])
    return 'runs', f'IH branch {ratio:.3f} of the backbone\'s weights, {size[1]}x{size[2]} px'


def survey(names: List[str]) -> Dict[str, Dict[str, Tuple[str, str]]]:
    results = {}
    for name in names:
        results[name] = {}
        for mode in MODES:
            t = time.perf_counter()
            results[name][mode] = try_backbone(name, mode)
            print(f'{name:34s} {mode:6s} {results[name][mode][0]:8s} {time.perf_counter() - t:5.1f}s  '
                  f'{results[name][mode][1][:150]}', file=sys.stderr, flush=True)
    return results


def _cell(result: Tuple[str, str]) -> str:
    status, detail = result
    if status == 'runs':
        return 'yes'
    short = re.sub(r'\s+', ' ', detail).replace('|', '/')
    short = short if len(short) < 140 else short[:137] + '...'
    return f'no: {short}' if status == 'refused' else f'**BUG**: {short}'


def coverage(results: Dict[str, Dict[str, Tuple[str, str]]], families: Dict[str, str]) -> Dict[str, Tuple[int, int]]:
    names = [n for n in families.values() if n in results]
    return {mode: (sum(results[n][mode][0] == 'runs' for n in names), len(names)) for mode in MODES}


def table(results: Dict[str, Dict[str, Tuple[str, str]]], families: Dict[str, str] = FAMILIES,
          subsets: Tuple[Tuple[str, Set[str]], ...] = (('not counting the hard cases picked beforehand', HARD_CASES),),
          ) -> str:
    """The markdown table and the coverage: of every family, and of those not in each named subset."""
    family_of = {v: k for k, v in families.items()}
    kind = 'torchvision' if families is TORCHVISION_FAMILIES else 'timm'
    lines = [f'| {kind} family | model | `ih_fusion='"'branch'"'` | `ih_fusion='"'stem'"'` |', '|---|---|---|---|']
    for name, r in sorted(results.items(), key=lambda kv: family_of.get(kv[0], kv[0])):
        lines.append(f'| {family_of.get(name, "")} | {name} | {_cell(r["branch"])} | {_cell(r["stem"])} |')
    lines.append('')
    for label, subset in (('all', families), *((lab, {k: v for k, v in families.items() if k not in out})
                                               for lab, out in subsets)):
        cov = coverage(results, subset)
        lines.append(f'Families wrapped and run, {label}: ' + ', '.join(
            f'{mode} {ok}/{n} ({100 * ok / max(n, 1):.0f} %)' for mode, (ok, n) in cov.items()) + '.  ')
    return '\n'.join(lines).rstrip() + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('names', nargs='*', help='models to try (default: one per family, FAMILIES)')
    parser.add_argument('--page', action='store_true', help=f'replace the table in {PAGE.relative_to(PAGE.parents[1])}')
    parser.add_argument('--json', help='also write the results here (to merge runs of parts of the list)')
    parser.add_argument('--merge', nargs='+', help='make the table from these --json files instead of running')
    parser.add_argument('--torchvision', action='store_true', help='torchvision\'s families (TORCHVISION_FAMILIES)')
    parser.add_argument('--write-doc', action='store_true', help=f'with --torchvision: write {TORCHVISION_DOC}')
    args = parser.parse_args()
    families = TORCHVISION_FAMILIES if args.torchvision else FAMILIES
    if args.merge:
        results = {k: v for f in args.merge for k, v in json.loads(Path(f).read_text()).items()}
    else:
        results = survey(args.names or list(families.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    subsets = () if args.torchvision else (('not counting the hard cases picked beforehand', HARD_CASES),)
    text = table(results, families, subsets)
    print(text)
    root = Path(__file__).resolve().parents[1]
    if args.page and not args.torchvision:
        write_table(PAGE, TABLE, text)
    if args.write_doc:
        sizes = [f'- {name}: ' + '; '.join(f'{mode}: {r[mode][1]}' for mode in MODES if r[mode][0] == 'runs')
                 for name, r in sorted(results.items()) if any(r[mode][0] == 'runs' for mode in MODES)]
        (root / TORCHVISION_DOC).write_text(TORCHVISION_HEADER.format(
            date=time.strftime('%Y-%m-%d'), machine=platform.processor() or platform.machine()) + text +
            '\nWhat runs, at which image size (a network with a fixed grid, as ViT and MaxViT, runs on IL at its own '
            'size: the WAE model then takes images of twice that side):\n\n' + '\n'.join(sizes) + '\n')


if __name__ == '__main__':
    main()
