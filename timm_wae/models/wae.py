"""WAEWrapper: turn any timm classifier into a WAE classifier (Chen et al., AAAI 2018).

    image ──WAE──► IL ──► backbone (unchanged) ──► fL ──► backbone head ──────────► sL ─┐
              └──► IH ──► quarter-width copy ───► fH ─┐                                 ├─► sL + sc
                                          concat(fL, fH) ──► fusion head ──────► sc ─┘

The paper averages the two scores; the authors' released model sums them (same argmax). The registered
models and their one builder are in ``registry.py``, what their pretrained cfgs say in ``cfg.py``.
"""
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._compat import load_hook
from ..front_ends import check_image, create_front_end, front_end_class
from ..layers import FusionHead, check_dtype, check_il_size, is_tracing, join_features, mlp_head_shape
from ..surgery import check_runs, fit_backbone, shrink_width, widen_input
from ..util import is_wae_model, model_name
from .cfg import ih_into_stem, layer_names, pool_size

__all__ = ['WAEWrapper', 'WAEOutput', 'is_wae_model']


def _for_branches(pattern: str, branches: Tuple[str, ...]) -> str:
    body = pattern[1:] if pattern.startswith('^') else pattern
    return rf'^(?:{"|".join(branches)})\.{body}'


@dataclass
class WAEOutput:
    """Everything a training step needs from one forward pass."""
    logits: Tensor                      # sL + sc, what forward() returns
    logits_low: Tensor                  # sL, from the backbone's own head on fL
    logits_fused: Optional[Tensor]      # sc, from the fusion head on concat(fL, fH); None without IH
    low: Tensor                         # IL before standardisation
    high: Optional[Tensor]              # IH before standardisation (made even when use_ih=False)
    recon: Optional[Tensor] = None      # I', only when the decoder was asked for


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
            weights at first, so a trained backbone starts as it was on IL); no second network. The default
            is the paper's; ``from_trained`` and the registered ``wae2_*``/``wae4_*`` models default to 'stem',
            the speed-accuracy choice for the Haar-started front ends (a converted network stays one network).
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
        use_stem = ih_into_stem(ih_fusion)
        self.front_end = create_front_end(front_end, in_chans, wae_width, decoder=with_decoder)
        low_chans, high_chans = self.front_end.low_chans, self.front_end.high_chans
        use_ih = use_ih and high_chans > 0
        backbone, il_size, layout, readers, self.failed_il_sizes = fit_backbone(
            backbone, backbone_kwargs, num_classes, low_chans, self.front_end.reduction, pretrained_backbone)
        use_stem = use_ih and use_stem
        # the backbone's layers that read IH (widened for it): a conversion's new parts, with the front end
        self.ih_readers = widen_input(backbone, high_chans, readers, model_name(backbone)) if use_stem else ()
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
        self.prefix_tokens = (-1 if layout == 'NCHW' else getattr(backbone, 'num_prefix_tokens', 0) if layout == 'NLC'
                              else 0)
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
        self.pretrained_cfg = self._derived_cfg(getattr(backbone, 'pretrained_cfg', {}), front_end)
        self._arch_args = dict(
            backbone=model_name(backbone), in_chans=in_chans, front_end=front_end, use_ih=use_ih,
            ih_fusion=ih_fusion, width_divisor=width_divisor, standardize=standardize, fusion_hidden=fusion_hidden,
            drop_rate=drop_rate, wae_width=wae_width, with_decoder=with_decoder and self.front_end.learned,
            backbone_kwargs={k: v for k, v in backbone_kwargs.items() if k != 'num_classes'},
        )
        self.register_load_state_dict_pre_hook(load_hook)
        if global_pool is not None:
            self.reset_classifier(self.num_classes, global_pool)
            self._arch_args['global_pool'] = global_pool
        # a token grid that takes one size only (ViT's strict PatchEmbed): the image size it needs, checked first
        embed = getattr(backbone, 'patch_embed', None)
        strict = getattr(embed, 'strict_img_size', False) and not getattr(embed, 'dynamic_img_size', False)
        self.fixed_image_size: List[int] = list(self.pretrained_cfg['input_size'][1:]) if strict else []
        self._check_builds()

    def _derived_cfg(self, backbone_cfg: Dict[str, Any], front_end: str) -> Dict[str, Any]:
        """The backbone's data config (the WAE sees the full-size image) at an image size it runs at (r times
        the IL size that the backbone runs at), this model's layer names."""
        keep = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'license')
        cfg = {k: v for k, v in backbone_cfg.items() if k in keep}
        r = self.front_end.reduction
        cfg.setdefault('input_size', (self.in_chans, 224, 224))
        if [math.ceil(s / r) for s in cfg['input_size'][1:]] != self.branch_size:
            cfg['input_size'] = (self.in_chans, *[r * s for s in self.branch_size])
        cfg.update(architecture='wae', num_classes=self.num_classes,
                   pool_size=pool_size(backbone_cfg, cfg['input_size'], front_end),
                   **layer_names(backbone_cfg, front_end, self.fusion_head is not None))
        return cfg

    def _check_builds(self) -> None:
        """One forward of the whole model at its pretrained_cfg input size: what it builds runs, or the
        constructor says which layer fails (never the first forward of a user)."""
        p = next(self.backbone.parameters())
        x = torch.zeros(1, self.in_chans, *self.pretrained_cfg['input_size'][1:], device=p.device, dtype=p.dtype)
        what = (f"WAEWrapper({model_name(self.backbone)!r}, front_end={self._arch_args['front_end']!r}, "
                f"ih_fusion={self.ih_fusion!r})")
        check_runs(self, x, (1, self.num_classes) if self.num_classes else None, what)

    @classmethod
    def from_trained(cls, network: nn.Module, front_end: str = 'wae2', ih_fusion: str = 'stem',
                     **kwargs: Any) -> 'WAEWrapper':
        """A trained classifier as a faster WAE model that starts exactly where it was. The network is copied
        (the caller's module is untouched). In eval mode, before any training, the model's output is
        ``network(F.avg_pool2d(x, r))`` (r = 2 for 'wae2' and 'haar', 4 for 'wae4'): IL's standardisation starts
        at the front end's gain over the pooled image, IH enters through zero weights (``ih_fusion='stem'``, the
        default of the Haar-started front ends it converts with, as the registered ``wae2_*``/``wae4_*`` models)
        or a fusion classifier that starts at zero (``'branch'``). Fine-tuning then learns what to take from IH
        (``recipes/configs/convert.yaml``).
        """
        if not isinstance(network, nn.Module):
            raise TypeError(f'from_trained converts a trained nn.Module, got {type(network).__name__}; '
                            f"for a timm name use WAEWrapper(name, pretrained_backbone=True)")
        if front_end_class(front_end).low_gain is None or not kwargs.get('standardize', True):
            raise ValueError(f"front_end={front_end!r} with standardize={kwargs.get('standardize', True)} cannot "
                             f"start where the network was (IL is not a known multiple of the pooled image): use "
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

    def _pool_type(self) -> str:
        if self.prefix_tokens >= 0:  # ViT: 'token' or 'avg'
            return getattr(self.backbone, 'global_pool', 'avg') or 'avg'
        pool = getattr(getattr(self.backbone, 'head', None), 'global_pool', None)
        pool = getattr(pool, 'pool_type', pool) or getattr(self.backbone, 'global_pool', 'avg')
        return pool if isinstance(pool, str) and pool else 'avg'

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
                raise AttributeError(f'backbone {model_name(self.backbone)!r} has no feature_info: no pyramid')
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
            return [join_features(a, b) for a, b in zip(out_low, out_high)]
        return join_features(out_low[0], out_high[0]), [join_features(a, b) for a, b in zip(out_low[1], out_high[1])]

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
            if not is_tracing():
                check_dtype(self, x)
                check_il_size(self, x)
        return self.front_end(x)

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
        return join_features(f_low, f_high)

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

    def classification_loss(
            self, out: WAEOutput, target: Tensor,
            criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> Tensor:
        """Lc = CE(sL) + CE(sc), the paper's eq. 7 applied to both scores."""
        loss = criterion(out.logits_low, target)
        return loss if out.logits_fused is None else loss + criterion(out.logits_fused, target)
