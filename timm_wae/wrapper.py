"""WAEWrapper: turn any timm classifier into a WAE classifier (Chen et al., AAAI 2018).

    image ──WAE──► IL ──► backbone (unchanged) ──► fL ──► backbone head ──────────► sL ─┐
              └──► IH ──► quarter-width copy ───► fH ─┐                                 ├─► sL + sc
                                          concat(fL, fH) ──► fusion head ──────► sc ─┘

The paper averages the two scores; the authors' released model sums them (same argmax).
"""
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead
from timm.models.vgg import ConvMlp
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .autoencoder import check_image
from .front_ends import create_front_end, front_end_class
from .shrink import ShrinkError, check_runs, il_sizes, probe_backbone, shrink_width, widen_input

__all__ = ['WAEWrapper', 'WAEOutput', 'FusionHead', 'FlatMlp', 'wae_layer_names', 'widen_first_conv',
           'upgrade_state_dict']


def _share(reduction: int) -> str:
    """What IL's side is of the image's, in words for messages: 'half', '1/4'."""
    return 'half' if reduction == 2 else f'1/{reduction}'


def _tracing() -> bool:
    """A trace (torch.jit.trace, torch.fx) records ops, not Python decisions on shapes or dtypes."""
    if not torch.jit.is_scripting():
        return torch.jit.is_tracing() or is_fx_symbolic_tracing()
    return False


@dataclass
class WAEOutput:
    """Everything a training step needs from one forward pass."""
    logits: Tensor                      # sL + sc, what forward() returns
    logits_low: Tensor                  # sL, from the backbone's own head on fL
    logits_fused: Optional[Tensor]      # sc, from the fusion head on concat(fL, fH); None without IH
    low: Tensor                         # IL before standardisation
    high: Optional[Tensor]              # IH before standardisation (made even when use_ih=False)
    recon: Optional[Tensor] = None      # I', only when the decoder was asked for


class FlatMlp(nn.Module):
    """fc-ReLU-dropout-fc-ReLU over the flattened k x k feature map (VGG's classifier).

    timm's VGG computes the same thing as a k x k convolution (ConvMlp), which oneDNN runs
    several times slower than a matrix product at small batch. Maps of another size are pooled
    to k x k first. The output is [B, hidden, 1, 1] so that a pooling ClassifierHead can follow.
    """

    def __init__(self, in_chans: int, hidden: int, kernel: int, drop_rate: float = 0.):
        super().__init__()
        self.kernel = kernel
        self.fc1 = nn.Linear(in_chans * kernel * kernel, hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if _tracing() or x.shape[-2:] != (self.kernel, self.kernel):  # pooling to the same size is the identity
            x = F.adaptive_avg_pool2d(x, self.kernel)
        x = self.drop(self.act1(self.fc1(x.flatten(1))))
        return self.act2(self.fc2(x))[:, :, None, None]


def mlp_head_shape(backbone: nn.Module) -> Optional[Tuple[int, int]]:
    """(hidden, kernel) of a VGG-style MLP head, None for a pool-and-fc head."""
    head = getattr(backbone, 'pre_logits', None)
    if isinstance(head, FlatMlp):
        return head.fc2.out_features, head.kernel
    if isinstance(head, ConvMlp):
        return head.fc2.out_channels, head.input_kernel_size
    return None


class FusionHead(nn.Module):
    """sc: "a similar classifier" to the backbone's head, on concat(fL, fH).

    For VGG-style heads (an MLP over the pooled 2-D map) it is an MLP of the same shape,
    otherwise global pooling and a linear layer. Token features ([B, N, C], ``prefix_tokens`` >= 0)
    are pooled as the backbone pools them: its class token, or the mean of the patch tokens.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            pool_type: str = 'avg',
            drop_rate: float = 0.,
            mlp_hidden: Optional[int] = None,
            mlp_kernel: int = 1,
            prefix_tokens: int = -1,
    ):
        super().__init__()
        self.prefix_tokens = prefix_tokens
        self.class_token = False
        pool_type = self._token_pool(pool_type)
        self.pre_logits = FlatMlp(in_features, mlp_hidden, mlp_kernel, drop_rate) if mlp_hidden else nn.Identity()
        self.head = ClassifierHead(mlp_hidden or in_features, num_classes, pool_type, drop_rate)
        self.num_features = self.head.num_features

    def _token_pool(self, pool_type: str) -> str:
        """Token features: remember whether to take the class token; the head then pools a 1x1 map."""
        if self.prefix_tokens < 0:
            return pool_type
        self.class_token = self.prefix_tokens > 0 and pool_type == 'token'
        return 'avg'

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        self.head.reset(num_classes, pool_type if pool_type is None else self._token_pool(pool_type))

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.prefix_tokens >= 0:  # [B, N, C] (or NHWC maps [B, H, W, C]) -> [B, C, 1, 1]
            if x.dim() == 4:
                x = x.flatten(1, 2)
            x = (x[:, 0] if self.class_token else x[:, self.prefix_tokens:].mean(1))[:, :, None, None]
        return self.head(self.pre_logits(x), pre_logits=pre_logits)


def widen_first_conv(backbone: nn.Module, extra_chans: int) -> None:
    """Give the backbone's first conv ``extra_chans`` more input channels with zero weights, in place.

    The new channels start without any effect, so a trained backbone keeps its function on the
    original channels and learns what to take from the new ones.
    """
    widen_input(backbone, extra_chans, (), _backbone_name(backbone))


def wae_pool_size(backbone_cfg: Dict[str, Any], input_size: Tuple[int, ...], front_end: str) -> Tuple[int, int]:
    """The unpooled feature map's size (timm's ``pool_size``) at ``input_size``: the front end divides the
    side by its reduction, the backbone by its own (its cfg's input over pool size; 32 when unknown)."""
    inner_in, inner_pool = backbone_cfg.get('input_size') or (3, 224, 224), backbone_cfg.get('pool_size') or (7, 7)
    reduction = front_end_class(front_end).reduction
    return tuple(math.ceil(math.ceil(s / reduction) / (i // p)) for s, i, p in zip(input_size[-2:], inner_in[-2:], inner_pool))


def wae_layer_names(backbone_cfg: Dict[str, Any], front_end: str = 'wae', fusion_head: bool = True) -> Dict[str, Any]:
    """The pretrained-cfg ``first_conv`` and ``classifier`` of a WAE model, from its backbone's cfg.

    The one place these names are made: the wrapper's derived cfg and the generic ``wae`` entry
    point (which timm's loader needs before the model exists) both call it.
    """
    inner = backbone_cfg.get('classifier') or 'head.fc'
    classifier = f'backbone.{inner if isinstance(inner, str) else inner[0]}'
    layer = front_end_class(front_end).first_layer
    first_conv = f'front_end.{layer}' if layer else f'backbone.{backbone_cfg.get("first_conv", "")}'
    return dict(first_conv=first_conv, classifier=(classifier, 'fusion_head.head.fc') if fusion_head else classifier)


# Keys saved by timm_wae 0.1, whose front end was the attribute ``wae`` and whose IL/IH standardisation
# sat beside it: renamed as they load.
LEGACY_PREFIXES = {'wae.': 'front_end.', 'norm_low.': 'front_end.norm_low.', 'norm_high.': 'front_end.norm_high.'}


def upgrade_state_dict(state_dict: Dict[str, Tensor], prefix: str = '',
                       model: Optional['WAEWrapper'] = None) -> Dict[str, Tensor]:
    """Rename a WAE model's legacy keys (under ``prefix``) in place; returns the same dict. With the
    ``model`` they load into: a file that holds a decoder (every learned front end's model before 0.3)
    gives the model its decoder, so that nothing in the file is dropped."""
    for old, new in LEGACY_PREFIXES.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
    if model is not None and model.front_end.learned and not model.front_end.can_reconstruct and \
            not model.front_end.reparameterized and any(k.startswith(prefix + 'front_end.decoder.') for k in state_dict):
        model.front_end.attach_decoder()
    return state_dict


def _upgrade_hook(module: nn.Module, state_dict: Dict[str, Tensor], prefix: str, *args: Any) -> None:
    upgrade_state_dict(state_dict, prefix, module)


def _for_branches(pattern: str, branches: Tuple[str, ...]) -> str:
    body = pattern[1:] if pattern.startswith('^') else pattern
    return rf'^(?:{"|".join(branches)})\.{body}'


def _backbone_name(backbone: nn.Module) -> str:
    return getattr(backbone, 'pretrained_cfg', {}).get('architecture') or type(backbone).__name__


class WAEWrapper(nn.Module):
    """A WAE classifier around any timm model.

    Args:
        backbone: a timm model name or module; it receives IL unchanged and keeps its own head (sL).
        num_classes: classes of both heads; None keeps the backbone's.
        in_chans: image channels (the WAE always produces 3-channel IL and IH).
        front_end: 'wae' (the paper's learned WAE), 'wae2' (a cheap learned WAE at half resolution that
            starts as the Haar DWT), 'dwt97' / 'haar' (Wavelet+CNN baselines) or 'resize' (IR baseline).
        use_ih: False drops the IH branch and the fusion head (the "IL only" baseline).
        ih_fusion: where IH joins. 'branch' (the paper): a quarter-width copy of the backbone and a fusion
            head. 'stem': IH's channels are extra input channels of the backbone's first conv (zero
            weights at first, so a trained backbone starts as it was on IL); no second network.
        width_divisor: the IH branch's widths are the backbone's divided by this (4 in the paper).
        standardize: non-affine BatchNorm on IL and IH before the networks, as the released model.
        fusion_hidden: width of the fusion MLP for VGG-style heads (default: the backbone's).
        drop_rate: dropout of the fusion head.
        wae_width: channels inside the WAE (16 in the paper).
        global_pool: the pooling of both heads (timm's argument; '' keeps the maps unpooled), None: the backbone's.
        with_decoder: give a learned front end its decoder, to train it with the transform loss
            (``forward_train(reconstruct=True)``; the recipes' stages 1 and 3). Off by default: ``forward``
            never runs it, and a classifier should have no parameter that its forward leaves without a
            gradient (DDP, timm's training loop).
        backbone_kwargs: passed to ``timm.create_model`` when ``backbone`` is a name.
        pretrained_backbone: start the backbone from timm's pretrained weights (when a name).
    """

    __jit_unused_properties__ = ['first_conv', 'feature_info', 'model_args']  # TorchScript: metadata

    def __init__(
            self,
            backbone: Union[str, nn.Module],
            num_classes: Optional[int] = None,
            in_chans: int = 3,
            front_end: str = 'wae',
            use_ih: bool = True,
            ih_fusion: str = 'branch',
            width_divisor: int = 4,
            standardize: bool = True,
            fusion_hidden: Optional[int] = None,
            drop_rate: float = 0.,
            wae_width: int = 16,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            pretrained_backbone: bool = False,
            global_pool: Optional[str] = None,
            with_decoder: bool = False,
    ):
        super().__init__()
        backbone_kwargs = dict(backbone_kwargs or {})
        if ih_fusion not in ('branch', 'stem'):
            raise ValueError(f"unknown ih_fusion {ih_fusion!r}; expected 'branch' or 'stem'")
        self.front_end = create_front_end(front_end, in_chans, wae_width, decoder=with_decoder)
        low_chans, high_chans = self.front_end.low_chans, self.front_end.high_chans
        use_ih = use_ih and high_chans > 0
        if isinstance(backbone, str):
            if num_classes is not None:
                backbone_kwargs['num_classes'] = num_classes
            name, inner = backbone, timm.models.get_pretrained_cfg(backbone)
            # a fixed token grid (ViT, Swin): the backbone is built for IL, 1/reduction of the image's size
            fixed = inner is not None and inner.fixed_input_size and 'img_size' not in backbone_kwargs
            made: Dict[Any, nn.Module] = {}

            def make(il_size: Optional[Tuple[int, int]]) -> nn.Module:
                key = il_size if fixed else None
                if key not in made:
                    from .hub import create_backbone  # weights offline: a clear error at once
                    made[key] = create_backbone(name, pretrained_backbone, in_chans=low_chans,
                                                **backbone_kwargs, **({'img_size': list(key)} if fixed else {}))
                return made[key]
            try:
                backbone = make(None if not fixed else tuple(math.ceil(s / self.front_end.reduction) for s in inner.input_size[1:]))
            except Exception as e:  # noqa: BLE001 - a grid it cannot take (an assert): its own, probed below
                if not fixed or isinstance(e, OSError):  # not a size problem (weights offline, a missing file)
                    raise
                backbone = make(tuple(inner.input_size[1:]))
        elif not isinstance(backbone, nn.Module):
            raise TypeError(f'backbone must be a timm model name or nn.Module, got {type(backbone).__name__}')
        else:
            given = backbone = copy.deepcopy(backbone)  # the caller's network stays as it was, and still runs
            make = lambda il_size: given  # noqa: E731
        for method in ('forward_features', 'forward_head', 'reset_classifier'):
            if not callable(getattr(backbone, method, None)):
                raise TypeError(
                    f'backbone {_backbone_name(backbone)!r} has no {method}(): WAEWrapper needs a timm-style '
                    f'classifier (forward_features, forward_head, reset_classifier)')
        if num_classes is not None and num_classes != backbone.num_classes:
            backbone.reset_classifier(num_classes)
        use_stem = use_ih and ih_fusion == 'stem'
        backbone, il_size, layout, readers = self._fit_backbone(backbone, make, low_chans)
        # the backbone's layers that read IH (widened for it): a conversion's new parts, with the front end
        self.ih_readers = widen_input(backbone, high_chans, readers, _backbone_name(backbone)) if use_stem else ()
        self.ih_fusion = ih_fusion
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        self.front_end.standardize_outputs(low=standardize, high=standardize and use_ih)
        self.ih_into_stem = use_stem

        self.low_features = backbone.num_features
        self.high_features = 0
        # token models' features are [B, N, C] (channels last, N tokens with prefix tokens first); Swin's are
        # NHWC maps [B, H, W, C], pooled as tokens
        self.prefix_tokens = -1 if layout == 'NCHW' else getattr(backbone, 'num_prefix_tokens', 0) if layout == 'NLC' else 0
        self.channel_dim = {'NCHW': 1, 'NHWC': 3, 'NLC': 2}[layout]
        # the IL size the networks run at (probed): a fixed token grid's, else half the backbone's image where
        # it runs there (HRNet, DLA need a multiple of 64)
        self.branch_size = list(il_size)
        self.ih_branch = self.fusion_head = None
        if use_ih and not use_stem:
            self.ih_branch, self.high_features = shrink_width(backbone, width_divisor, high_chans, self.branch_size,
                                                              layout)
            hidden, kernel = mlp_head_shape(backbone) or (None, 1)
            self.fusion_head = FusionHead(
                self.low_features + self.high_features,
                self.num_classes,
                pool_type=self._pool_type(),
                drop_rate=drop_rate,
                mlp_hidden=fusion_hidden or hidden,
                mlp_kernel=kernel,
                prefix_tokens=self.prefix_tokens,
            )
        self.num_features = self.low_features + self.high_features
        self.head_hidden_size = backbone.head_hidden_size + (
            self.fusion_head.num_features if self.fusion_head is not None else 0)

        self._feature_info = None  # List[Dict] made on first use (feature_info)
        self.unpooled = False  # reset_classifier(0, ''): forward returns the unpooled features
        # the cfg of a wrapper built directly; timm's builder replaces it with the registered one
        self.pretrained_cfg = self._derive_cfg(getattr(backbone, 'pretrained_cfg', {}), front_end)
        r = self.front_end.reduction
        if [math.ceil(s / r) for s in self.pretrained_cfg['input_size'][1:]] != self.branch_size:
            # an image size it runs at: r times the IL size that the backbone runs at
            self.pretrained_cfg['input_size'] = (in_chans, *[r * s for s in self.branch_size])
            self.pretrained_cfg['pool_size'] = wae_pool_size(getattr(backbone, 'pretrained_cfg', {}),
                                                             self.pretrained_cfg['input_size'], front_end)
        self._arch_args = dict(
            backbone=_backbone_name(backbone), in_chans=in_chans, front_end=front_end, use_ih=use_ih,
            ih_fusion=ih_fusion, width_divisor=width_divisor, standardize=standardize, fusion_hidden=fusion_hidden,
            drop_rate=drop_rate, wae_width=wae_width, with_decoder=with_decoder and self.front_end.learned,
            backbone_kwargs={k: v for k, v in backbone_kwargs.items() if k != 'num_classes'},
        )
        self.register_load_state_dict_pre_hook(_upgrade_hook)
        if global_pool is not None:
            self.reset_classifier(self.num_classes, global_pool)
            self._arch_args['global_pool'] = global_pool
        # a token grid that takes one size only (ViT's strict PatchEmbed): the image size it needs, checked first
        embed = getattr(backbone, 'patch_embed', None)
        strict = getattr(embed, 'strict_img_size', False) and not getattr(embed, 'dynamic_img_size', False)
        self.fixed_image_size: List[int] = list(self.pretrained_cfg['input_size'][1:]) if strict else []
        self._check_builds()

    def _fit_backbone(self, backbone: nn.Module, make: Callable[[Optional[Tuple[int, int]]], nn.Module],
                      low_chans: int) -> Tuple[nn.Module, Tuple[int, int], str, List[str]]:
        """The backbone built for an IL size it runs at (one forward per size tried, a fixed grid rebuilt for
        each), its feature layout and the convs that read its input; ShrinkError when it runs at none."""
        grid = getattr(getattr(backbone, 'patch_embed', None), 'img_size', None)
        image = getattr(backbone, 'pretrained_cfg', {}).get('input_size', (3, 224, 224))[1:]
        sizes = il_sizes(image, grid, self.front_end.reduction)
        try:
            fitted = probe_backbone(make, sizes, low_chans, _backbone_name(backbone))
            # IL sizes it did not run at: an image of twice one is refused by name at the forward
            self.failed_il_sizes: List[List[int]] = [list(s) for s in sizes[:sizes.index(fitted[1])]]
            return fitted
        except ShrinkError:
            raise
        except Exception as e:  # building it for another grid failed: a clear error, not the constructor's
            raise ShrinkError(f'{_backbone_name(backbone)} cannot be built for IL ({_share(self.front_end.reduction)} the image): '
                              f'{type(e).__name__}: {e}') from e

    def _check_builds(self) -> None:
        """One forward of the whole model at its pretrained_cfg input size: what it builds runs, or the
        constructor says which layer fails (never the first forward of a user)."""
        p = next(self.backbone.parameters())
        x = torch.zeros(1, self.in_chans, *self.pretrained_cfg['input_size'][1:], device=p.device, dtype=p.dtype)
        what = (f"WAEWrapper({_backbone_name(self.backbone)!r}, front_end={self._arch_args['front_end']!r}, "
                f"ih_fusion={self.ih_fusion!r})")
        check_runs(self, x, (1, self.num_classes) if self.num_classes else None, what)

    @classmethod
    def from_trained(cls, network: nn.Module, front_end: str = 'wae2', ih_fusion: str = 'stem',
                     **kwargs: Any) -> 'WAEWrapper':
        """Convert a trained classifier into a faster WAE model that starts where the network was.

        The network is copied (the caller's module is untouched). In eval mode, before any training,
        the model's output is ``network(F.avg_pool2d(x, r))`` (r = 2 for 'wae2' and 'haar', 4 for
        'wae4'): IL's standardisation starts at the front end's gain over the pooled image, IH enters
        through zero weights (``ih_fusion='stem'``) or a fusion classifier that starts at zero
        (``'branch'``). Fine-tuning then learns what to take from IH (``recipes/configs/convert.yaml``).
        """
        if not isinstance(network, nn.Module):
            raise TypeError(f'from_trained converts a trained nn.Module, got {type(network).__name__}; '
                            f"for a timm name use WAEWrapper(name, pretrained_backbone=True)")
        if front_end_class(front_end).low_gain is None or not kwargs.get('standardize', True):
            raise ValueError(f"front_end={front_end!r} with standardize={kwargs.get('standardize', True)} cannot start "
                             f"where the network was (IL is not a known multiple of the pooled image): use "
                             f"front_end='wae2', 'wae4' or 'haar' with standardize=True")
        model = cls(network, front_end=front_end, ih_fusion=ih_fusion, **kwargs)
        fc = model.fusion_head.head.fc if model.fusion_head is not None else None
        if isinstance(fc, nn.Linear):
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
        return model


    @property
    def model_args(self) -> Dict[str, Any]:
        """Every argument of the architecture, JSON-serialisable: ``create_model('wae', **model_args)``
        rebuilds it (what a generic ``wae`` model saves as its config.json's model args)."""
        return dict(self._arch_args, num_classes=self.num_classes)

    # ------------------------------------------------------------------ config helpers
    def _pool_type(self) -> str:
        if self.prefix_tokens >= 0:  # ViT: 'token' or 'avg'
            return getattr(self.backbone, 'global_pool', 'avg') or 'avg'
        pool = getattr(getattr(self.backbone, 'head', None), 'global_pool', None)
        pool = getattr(pool, 'pool_type', pool) or getattr(self.backbone, 'global_pool', 'avg')
        return pool if isinstance(pool, str) and pool else 'avg'

    def _derive_cfg(self, backbone_cfg: Dict[str, Any], front_end: str) -> Dict[str, Any]:
        """The backbone's data config (the WAE sees the full-size image), this model's layer names."""
        keep = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'license')
        cfg = {k: v for k, v in backbone_cfg.items() if k in keep}
        cfg.setdefault('input_size', (self.in_chans, 224, 224))
        cfg.update(architecture='wae', num_classes=self.num_classes,
                   pool_size=wae_pool_size(backbone_cfg, cfg['input_size'], front_end),
                   **wae_layer_names(backbone_cfg, front_end, self.fusion_head is not None))
        return cfg

    @property
    def first_conv(self) -> str:
        return self.pretrained_cfg['first_conv']

    # ------------------------------------------------------------------ timm model contract
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        inner = self.backbone.group_matcher(coarse)
        branches = ('backbone', 'ih_branch') if self.ih_branch is not None else ('backbone',)
        matcher = {'stem': rf'^front_end|{_for_branches(inner["stem"], branches)}'}
        blocks = inner.get('blocks')
        if isinstance(blocks, str):
            matcher['blocks'] = _for_branches(blocks, branches)
        elif blocks is not None:
            matcher['blocks'] = [(_for_branches(p, branches), idx) for p, idx in blocks]
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
        if self.ih_branch is not None:
            self.ih_branch.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def network_parameters(self) -> List[nn.Parameter]:
        """The backbone's parameters but those of the layers that read IH: what a converted model kept of
        the trained network (a conversion's warm-up holds them while the new parts learn)."""
        readers = {f'{name}.' for name in self.ih_readers}
        return [p for n, p in self.backbone.named_parameters() if not any(n.startswith(r) for r in readers)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        inner = getattr(self.backbone, 'no_weight_decay', lambda: set())()
        branches = ('backbone', 'ih_branch') if self.ih_branch is not None else ('backbone',)
        return {f'{b}.{n}' for n in inner for b in branches}

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        if self.fusion_head is None:
            return self.backbone.get_classifier()
        return self.backbone.get_classifier(), self.fusion_head.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Reset both heads (sL and sc); 0 removes them and forward() returns pooled features, or with
        ``global_pool=''`` the unpooled features themselves (timm's contract; the VGG-style MLP heads
        pool inside, so no head runs then)."""
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.unpooled = global_pool == ''
            self.backbone.reset_classifier(num_classes, global_pool)
        if self.fusion_head is not None:
            self.fusion_head.reset(num_classes, global_pool)
        self.num_classes = num_classes

    # ------------------------------------------------------------------ feature pyramid (features_only)
    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        """The backbone's pyramid, reductions relative to the input image (the backbone's times the front
        end's reduction).

        With an IH branch, each level's channels are the backbone's plus the branch's: its map of
        the same level is joined by concatenation (average-pooled to the IL map's size where they
        differ), as ``forward_features`` joins the last level. With ``ih_fusion='stem'`` IH is in
        the backbone's input, so the pyramid is the backbone's.
        """
        if self._feature_info is None:
            info = getattr(self.backbone, 'feature_info', None)
            if not info:
                raise AttributeError(f'backbone {_backbone_name(self.backbone)!r} has no feature_info: no pyramid')
            info = [dict(i) for i in (info.info if hasattr(info, 'info') else info)]
            extra = self._branch_channels(len(info)) if self.ih_branch is not None else [0] * len(info)
            self._feature_info = [dict(i, reduction=self.front_end.reduction * i['reduction'], num_chs=i['num_chs'] + c,
                                       module=f"backbone.{i['module']}") for i, c in zip(info, extra)]
        return self._feature_info

    @torch.no_grad()
    def _branch_channels(self, levels: int) -> List[int]:
        """The IH branch's channels per level, from one small forward (widths may be rounded)."""
        p = next(self.ih_branch.parameters())
        was_training = self.ih_branch.training
        x = torch.zeros(1, self.front_end.high_chans,
                        *self.branch_size, device=p.device, dtype=p.dtype)
        maps = self.ih_branch.eval().forward_intermediates(x, indices=levels, intermediates_only=True)
        self.ih_branch.train(was_training)
        return [m.shape[1] for m in maps]

    @staticmethod
    def _join(f_low: Tensor, f_high: Tensor) -> Tensor:
        """concat(fL, fH), fH average-pooled to fL's size where they differ (always pooled in a
        trace, where it is the identity for equal sizes: no Python branch on shapes)."""
        if _tracing() or f_high.shape[-2:] != f_low.shape[-2:]:
            f_high = F.adaptive_avg_pool2d(f_high, f_low.shape[-2:])
        return torch.cat([f_low, f_high], dim=1)

    @torch.jit.unused
    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """timm's contract: the pyramid maps at ``indices`` (and the final features), IL and IH joined."""
        feed, high = self.network_inputs(*self.decompose(x))
        kw = dict(indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
                  intermediates_only=intermediates_only)
        out_low = self.backbone.forward_intermediates(feed, **kw)
        if self.ih_branch is None or high is None:
            return out_low
        out_high = self.ih_branch.forward_intermediates(high, **kw)
        if intermediates_only:
            return [self._join(a, b) for a, b in zip(out_low, out_high)]
        return self._join(out_low[0], out_high[0]), [self._join(a, b) for a, b in zip(out_low[1], out_high[1])]

    @torch.jit.unused
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the layers after the last level in ``indices`` (and the heads) from both networks."""
        _ = self.feature_info  # measure the branch's channels before its later stages go
        take = self.backbone.prune_intermediate_layers(indices, prune_norm, prune_head)
        if self.ih_branch is not None:
            self.ih_branch.prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head and self.fusion_head is not None:
            self.fusion_head.reset(0)
        return take

    # ------------------------------------------------------------------ forward
    def decompose(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(IL, IH) as the front end makes them, before standardisation (IH is None for 'resize')."""
        check_image(x, self.in_chans)
        if not torch.jit.is_scripting():
            if not _tracing():
                self._check_dtype(x)
                self._check_size(x)
        return self.front_end(x)

    @torch.jit.unused
    def _check_size(self, x: Tensor) -> None:
        """A backbone with a fixed token grid takes IL of one size: name the image size the user passed and
        the one that works, before a shape error deep inside the backbone."""
        r = self.front_end.reduction
        size = [math.ceil(s / r) for s in x.shape[-2:]]
        if size in self.failed_il_sizes:
            h, w = self.pretrained_cfg['input_size'][1:]
            raise ValueError(
                f'the backbone {_backbone_name(self.backbone)!r} does not run on IL of {size[0]}x{size[1]} ({_share(r)} '
                f'the {x.shape[-2]}x{x.shape[-1]} images passed; checked at construction): use {h}x{w} images, '
                f'or another size whose {_share(r)} it runs at (HRNet and DLA: a multiple of 64 px, {r}x that in images)')
        if self.fixed_image_size and size != [math.ceil(s / r) for s in self.fixed_image_size]:
            h, w = self.fixed_image_size
            raise ValueError(
                f'this model takes {h}x{w} images (its backbone {_backbone_name(self.backbone)!r} has a fixed token '
                f'grid, built for IL of {self.branch_size[0]}x{self.branch_size[1]}, {_share(r)} the image); got '
                f'{x.shape[-2]}x{x.shape[-1]}: resize the images to {h}x{w}, or build the model for your size '
                f"(backbone_kwargs=dict(img_size=...) with IL's size, {_share(r)} the image)")

    @torch.jit.unused
    def _check_dtype(self, x: Tensor) -> None:
        """An input of another float type than the weights (float64 images into a float32 model)
        would fail deep inside the first conv; outside autocast, say so here."""
        weight = next(self.backbone.parameters(), None)
        if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f'the images are {x.dtype} but the model\'s weights are {weight.dtype}: cast the images '
                            f'(x.to({weight.dtype})) or the model (model.to({x.dtype}))')

    def network_inputs(self, low: Tensor, high: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """(the backbone's input, the IH branch's input or None): standardised IL and IH, with IH
        joined to IL's channels under ``ih_fusion='stem'``."""
        low = self.front_end.norm_low(low)
        if high is None or (self.ih_branch is None and not self.ih_into_stem):
            return low, None
        high = self.front_end.norm_high(high)
        if self.ih_into_stem:
            return torch.cat([low, high], dim=1), None
        return low, high

    def _features(self, low: Tensor, high: Optional[Tensor]) -> Tensor:
        feed, high = self.network_inputs(low, high)
        f_low = self.backbone.forward_features(feed)
        if self.ih_branch is None or high is None:
            return f_low
        f_high = self.ih_branch.forward_features(high)
        if self.channel_dim != 1:  # tokens, NHWC maps: the two grids are the same size by construction
            return torch.cat([f_low, f_high], dim=self.channel_dim)
        return self._join(f_low, f_high)

    def forward_features(self, x: Tensor) -> Tensor:
        """concat(fL, fH), unpooled: [B, num_features, h, w] (token models: [B, tokens, num_features])."""
        low, high = self.decompose(x)
        return self._features(low, high)

    def _heads(self, x: Tensor, pre_logits: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        s_low = self.backbone.forward_head(x.narrow(self.channel_dim, 0, self.low_features), pre_logits=pre_logits)
        s_fused = None if self.fusion_head is None else self.fusion_head(x, pre_logits=pre_logits)
        return s_low, s_fused

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """sL + sc; with pre_logits (or no classifier) both heads' pre-logits side by side,
        [B, head_hidden_size]."""
        if self.num_classes == 0 and self.unpooled:
            return x
        s_low, s_fused = self._heads(x, pre_logits)
        if s_fused is None:
            return s_low
        return torch.cat([s_low, s_fused], dim=1) if pre_logits or self.num_classes == 0 else s_low + s_fused

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: Tensor, reconstruct: bool = False) -> WAEOutput:
        """One pass giving both scores and the sub-images; ``reconstruct`` also runs the decoder."""
        if reconstruct and self.front_end.reparameterized:
            raise RuntimeError(
                'this model is in its inference form (timm.utils.reparameterize_model), which cannot reconstruct: '
                'the decoder was dropped when the front end was folded. Train the unfolded model (the one '
                'reparameterize_model was given) and reparameterize it after training')
        low, high = self.decompose(x)
        s_low, s_fused = self._heads(self._features(low, high))
        logits = s_low if s_fused is None else s_low + s_fused
        recon = self.front_end.reconstruct(low, high, x.shape[-2:]) if reconstruct else None
        return WAEOutput(logits, s_low, s_fused, low, high, recon)

    # ------------------------------------------------------------------ losses
    def classification_loss(
            self, out: WAEOutput, target: Tensor,
            criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> Tensor:
        """Lc = CE(sL) + CE(sc), the paper's eq. 7 applied to both scores."""
        loss = criterion(out.logits_low, target)
        return loss if out.logits_fused is None else loss + criterion(out.logits_fused, target)
