"""``timm-wae visualize``: IL, IH and the reconstruction of images (the paper's Figures 3 and 4).
"""
import argparse
from pathlib import Path

from . import common


def add_parser(sub: argparse._SubParsersAction, fmt: type) -> argparse.ArgumentParser:
    p = common.add_command(
        sub, fmt, 'visualize', help="IL, IH, reconstruction (and the 9/7 DWT): the paper's Figs. 3-4",
        description='Per image: input, IL and IH (each min-max stretched per image), the energy share of IH '
                    '(sum IH^2 / (sum IL^2 + sum IH^2) before standardisation), and the reconstruction with its '
                    'PSNR against the input in [0, 1]; --compare adds the 9/7 DWT cA and |cH|+|cV|+|cD|.',
        examples=['timm-wae visualize wae_resnet18.imagenette --images a.jpg b.jpg --compare --out figures/'])
    p.add_argument('model', metavar='MODEL')
    p.add_argument('--images', nargs='+', required=True, metavar='FILE')
    p.add_argument('--out', default='wae_figures', metavar='DIR|FILE.png',
                   help='a folder (one PNG per image, or grid.png) or one .png (all images); default wae_figures/')
    p.add_argument('--grid', action='store_true', help='one figure with a row per image')
    p.add_argument('--compare', action='store_true', help="add the 9/7 DWT's cA and details of the same input")
    p.add_argument('--img-size', type=common.positive_int, help="override the data config's input size")
    common.model_options(p)
    p.add_argument('--json', metavar='FILE', help="write energy shares and PSNRs as JSON ('-' for stdout)")
    return p


def run(args: argparse.Namespace) -> int:
    from timm_wae.evaluate import UnreadableImageError, read_image
    from timm_wae.models.wae import is_wae_model
    from timm_wae.visualize import visualize

    for p in args.images:
        if not Path(p).is_file():
            raise common.CLIError(f'image {p!r} does not exist')
        try:
            read_image(p)
        except UnreadableImageError as e:
            raise common.CLIError(str(e)) from None
    if Path(args.out).suffix.lower() not in ('', '.png') and not Path(args.out).is_dir():
        raise common.CLIError(f'--out {args.out!r}: expected a folder or a .png file')
    common.check_out_parent(args.json)
    common.check_checkpoint(args.checkpoint)
    model = common.load_model(common.check_model_spec(args.model), pretrained=args.pretrained,
                              checkpoint=args.checkpoint)
    if not is_wae_model(model):
        raise common.CLIError(f'model {args.model!r} has no WAE front end to visualise (it is not a WAEWrapper); '
                              f"try a wae_* model: `timm.list_models('wae_*')`")
    front_end = model.front_end
    if front_end.learned and not front_end.can_reconstruct and not args.pretrained and args.checkpoint is None:
        front_end.attach_decoder()  # random weights throughout, the decoder's too (a trained file brings its own)
    try:
        rows = visualize(model, args.images, args.out, grid=args.grid, compare=args.compare,
                         img_size=args.img_size, model_name=args.model)
    except UnreadableImageError as e:
        raise common.CLIError(str(e)) from None
    for r in rows:
        share = '' if r['energy_share_ih'] is None else f"IH energy share {100 * r['energy_share_ih']:.2f}%"
        psnr = '' if r['psnr_db'] is None else f"PSNR {r['psnr_db']:.2f} dB"
        dwt = '' if r['dwt_energy_share'] is None else f"DWT detail share {100 * r['dwt_energy_share']:.2f}%"
        common.report(f"{r['image']}: " + ', '.join(t for t in (share, psnr, dwt) if t) + f" -> {r['file']}", args.json)
    common.write_json(args.json, {'command': 'visualize', 'model': args.model, 'rows': rows})
    return 0
