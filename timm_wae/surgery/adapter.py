"""Classifiers without timm's contract (torchvision's, a user's own nn.Module), cut before their head by torch.fx.

The network's forward is traced at its top level (``nn.Sequential`` containers are opened, every other module is
one call that runs its own forward as written), and cut in two where the head begins:

    image ──► body (every op up to the last feature map) ──► maps ──► head (pooling, ..., classifier) ──► logits

The classifier is the last layer with weights on the way to the output: an ``nn.Linear`` (torchvision's ``fc`` /
``classifier`` / ``head`` / ``heads``) or a 1x1 ``nn.Conv2d`` (SqueezeNet's). The maps are the last tensor before
it that still has more than one position (NCHW maps, [B, N, C] tokens); the body and the head are two
GraphModules running the network's own ops, so ``head(body(x))`` is the network's output exactly. A network that
cannot be cut this way is refused with a BackboneError naming the layer.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..util import BackboneError, first_line

__all__ = ['ClassifierAdapter', 'has_timm_contract', 'adapt_classifier', 'TORCHVISION_PREFIX', 'create_torchvision']

TORCHVISION_PREFIX = 'torchvision:'
_TIMM_METHODS = ('forward_features', 'forward_head', 'reset_classifier')


def has_timm_contract(model: nn.Module) -> bool:
    return all(callable(getattr(model, m, None)) for m in _TIMM_METHODS)


class _TopLevelTracer(torch.fx.Tracer):
    """Opens the network's own forward and plain nn.Sequential containers; any other module stays one call, so
    its forward (training-mode branches, shapes read at run time) runs as written."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).forward is not nn.Sequential.forward


class _NamedShapeProp(ShapeProp):
    """ShapeProp that remembers the node it is running (to name a layer that fails)."""
    current: Optional[torch.fx.Node] = None

    def run_node(self, n: torch.fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _ancestors(node: torch.fx.Node) -> Set[torch.fx.Node]:
    seen, todo = set(), list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += n.all_input_nodes
    return seen


def _is_map(node: torch.fx.Node) -> bool:
    """A tensor with channels and more than one position: NCHW / NHWC maps, [B, N, C] tokens (not pooled ones)."""
    meta = node.meta.get('tensor_meta')
    shape = getattr(meta, 'shape', None)
    return shape is not None and len(shape) >= 3 and sum(s > 1 for s in shape[1:]) >= 2


def _subgraph(gm: torch.fx.GraphModule, start: Optional[torch.fx.Node], nodes: Sequence[torch.fx.Node],
              outputs: Sequence[torch.fx.Node]) -> torch.fx.GraphModule:
    """A GraphModule of ``nodes`` (in graph order), ``start`` becoming its input (None: the network's own)."""
    graph, env = torch.fx.Graph(), {}
    if start is not None:
        env[start] = graph.placeholder('x')
    for n in nodes:
        if n not in env:
            env[n] = graph.node_copy(n, lambda a: env[a])
    out = [env[o] for o in outputs]
    graph.output(out[0] if len(out) == 1 else tuple(out))
    return torch.fx.GraphModule(gm, graph)


class ClassifierAdapter(nn.Module):
    """timm's classifier contract (``forward_features`` / ``forward_head`` / ``reset_classifier`` /
    ``num_features``, a ``pretrained_cfg`` naming the first conv and the classifier) over any traceable classifier.

    Args:
        network: the classifier; its modules are taken over (pass a copy to keep yours).
        architecture: what config.json records to rebuild it ('torchvision:resnet18'); default its class name.
        input_size: the image (C, H, W) it is traced and measured at.
        cfg: more pretrained-cfg entries (mean, std, crop_pct of the weights).
    """

    def __init__(self, network: nn.Module, architecture: Optional[str] = None,
                 input_size: Optional[Tuple[int, int, int]] = None, cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        name = architecture or type(network).__name__
        conv = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
        input_size = tuple(input_size or (conv.in_channels if conv is not None else 3, 224, 224))
        network.eval()  # traced as it runs in eval mode (Inception's auxiliary heads are training-only: dropped)
        try:
            gm = torch.fx.GraphModule(network, _TopLevelTracer().trace(network))
        except Exception as e:  # noqa: BLE001 - data-dependent control flow, an untraceable call
            raise BackboneError(f'{name} cannot be adapted to WAEWrapper: torch.fx cannot trace its forward '
                              f'({first_line(e)}); give it forward_features, forward_head and reset_classifier '
                              f"(timm's contract)") from e
        readers = self._propagate(gm, input_size, name)
        output = next(n for n in gm.graph.nodes if n.op == 'output')
        if not isinstance(output.args[0], torch.fx.Node) or 'tensor_meta' not in output.args[0].meta:
            raise BackboneError(f'{name} cannot be adapted to WAEWrapper: its forward returns a '
                              f'{type(output.args[0]).__name__}, not one tensor of logits')
        classifier, cut = self._find_cut(gm, output.args[0], name)
        order = list(gm.graph.nodes)
        body = [n for n in order if n in _ancestors(cut) or n is cut]
        head = [n for n in order if n in _ancestors(output) and n not in body and n.op != 'placeholder']
        for n in head:  # the head must read the maps only (and weights), not an earlier activation
            stray = [a for a in n.all_input_nodes if a in body and a is not cut and a.op != 'get_attr']
            if stray:
                raise BackboneError(f'{name} cannot be adapted to WAEWrapper: its head layer {n.name!r} reads '
                                  f'{stray[0].name!r} besides the feature maps {cut.name!r}, so the network '
                                  f'cannot be cut before its head')
        head += [a for n in head for a in n.all_input_nodes if a.op == 'get_attr' and a not in head]
        head.sort(key=order.index)
        self.body = _subgraph(gm, None, body, [cut])
        self.head = _subgraph(gm, cut, head, [classifier.args[0], output.args[0]])
        self._classifier = classifier.target  # the classifier's name inside ``head``
        module = self.get_classifier()
        self.num_classes = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        shape = cut.meta['tensor_meta'].shape
        self.num_features = shape[1] if len(shape) == 4 else shape[-1]
        self.head_hidden_size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        self._conv_classifier = isinstance(module, nn.Conv2d)  # SqueezeNet's
        self.num_prefix_tokens = 0
        self.pretrained_cfg = dict(cfg or {}, architecture=name, input_size=input_size, num_classes=self.num_classes,
                                   classifier=f'head.{self._classifier}',
                                   **({'first_conv': f'body.{readers[0]}'} if readers else {}))

    @staticmethod
    def _propagate(gm: torch.fx.GraphModule, input_size: Sequence[int], name: str) -> List[str]:
        """Record every node's output shape (one forward at ``input_size``); the convs that read the image."""
        x = torch.zeros(1, *input_size)
        readers: List[str] = []
        hooks = [m.register_forward_pre_hook(lambda _m, inp, n=n: readers.append(n) if inp and inp[0] is x else None)
                 for n, m in gm.named_modules() if isinstance(m, nn.Conv2d)]
        prop = _NamedShapeProp(gm)
        try:
            with torch.no_grad():
                prop.propagate(x)
        except Exception as e:  # noqa: BLE001
            layer = prop.current.target if prop.current is not None else '<root>'
            raise BackboneError(f'{name} cannot be adapted to WAEWrapper: it does not run on a '
                              f'{"x".join(map(str, input_size))} image (layer {layer!r}: {first_line(e)})') from e
        finally:
            for h in hooks:
                h.remove()
        return readers

    @staticmethod
    def _find_cut(gm: torch.fx.GraphModule, logits: torch.fx.Node, name: str
                  ) -> Tuple[torch.fx.Node, torch.fx.Node]:
        """(the classifier's node, the node of the feature maps it is computed from)."""
        before = _ancestors(logits) | {logits}
        order = [n for n in gm.graph.nodes if n in before]
        weighted = [n for n in order if n.op == 'get_attr' or (
            n.op == 'call_module' and any(True for _ in gm.get_submodule(n.target).parameters()))]
        if not weighted:
            raise BackboneError(f'{name} cannot be adapted to WAEWrapper: it has no layer with weights')
        last = weighted[-1]
        module = gm.get_submodule(last.target) if last.op == 'call_module' else None
        if not (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                                                  and module.groups == 1)):
            what = type(module).__name__ if module is not None else 'a tensor used directly'
            raise BackboneError(f'{name} cannot be adapted to WAEWrapper: the last layer with weights before its '
                              f'output, {last.target!r} ({what}), is not a classifier (an nn.Linear, or a 1x1 '
                              f'nn.Conv2d)')
        maps = [n for n in order if n in _ancestors(last) and _is_map(n)]
        if not maps:
            raise BackboneError(f'{name} cannot be adapted to WAEWrapper: its classifier {last.target!r} reads no '
                              f'feature map (a tensor with more than one position) to join IH with')
        return last, maps[-1]

    # ------------------------------------------------------------------ timm's contract
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        hidden, logits = self.head(x)
        return hidden if pre_logits or self.num_classes == 0 else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.get_submodule(self._classifier)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier of ``num_classes`` (0: none, forward_head gives the pre-logits). The network's
        own pooling is kept: ``global_pool`` may only be '' (unpooled features, the wrapper's) or its default."""
        if global_pool not in (None, '', 'avg'):
            raise ValueError(f'{self.pretrained_cfg["architecture"]} keeps its own pooling; global_pool '
                             f'{global_pool!r} cannot be set')
        width = self.head_hidden_size
        new = nn.Identity() if not num_classes else (
            nn.Conv2d(width, num_classes, 1) if self._conv_classifier else nn.Linear(width, num_classes))
        p = next(self.body.parameters())
        parent, _, attr = self._classifier.rpartition('.')
        setattr(self.head.get_submodule(parent), attr, new.to(device=p.device, dtype=p.dtype))
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=rf'^body\.{self.pretrained_cfg.get("first_conv", "body.")[len("body."):]}',
                    blocks=r'^body\.')

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise NotImplementedError(f'{self.pretrained_cfg["architecture"]} (an adapted classifier) has no '
                                      f'gradient checkpointing')


def torchvision_builder(network: nn.Module) -> Optional[str]:
    """The torchvision builder that makes ``network``'s layers (same class, same weights' names and shapes but the
    classifier's classes; built on the meta device), or None: what config.json records to rebuild it."""
    import torchvision.models
    if not type(network).__module__.startswith('torchvision.models'):
        return None
    shapes = {k: v.shape for k, v in network.state_dict().items()}
    for name in torchvision.models.list_models(module=torchvision.models):
        builder = torchvision.models.get_model_builder(name)
        if builder.__module__ != type(network).__module__:
            continue
        with torch.device('meta'):
            candidate = builder()
        if type(candidate) is not type(network):
            continue
        theirs = {k: v.shape for k, v in candidate.state_dict().items()}
        differ = [k for k in shapes if theirs.get(k) != shapes[k]]
        if theirs.keys() == shapes.keys() and len({shapes[k][0] for k in differ}) <= 1 and all(
                theirs[k][1:] == shapes[k][1:] for k in differ):
            return name  # the same but the classifiers' classes
    return None


def adapt_classifier(network: nn.Module) -> nn.Module:
    """The network itself when it has timm's contract, else a ClassifierAdapter over it (sharing its modules),
    named by its torchvision builder where it has one."""
    if has_timm_contract(network):
        return network
    name = torchvision_builder(network)
    cfg = _torchvision_cfg(name) if name else {}
    return ClassifierAdapter(network, name and f'{TORCHVISION_PREFIX}{name}', cfg.get('input_size'), cfg)


def _torchvision_cfg(name: str) -> Dict[str, Any]:
    """The data config of the builder's default weights (their transforms; known offline)."""
    from torchvision.models import get_model_weights
    try:
        t = get_model_weights(name).DEFAULT.transforms()
    except Exception:  # noqa: BLE001 - a builder without weights
        return {}
    crop, resize = t.crop_size[0], t.resize_size[0]
    return dict(input_size=(3, crop, crop), mean=tuple(t.mean), std=tuple(t.std), crop_pct=round(crop / resize, 4),
                interpolation=t.interpolation.value)


def create_torchvision(spec: str, pretrained: bool = False, weights_file: Optional[Union[str, Path]] = None,
                       **kwargs: Any) -> ClassifierAdapter:
    """``torchvision:resnet50`` (random weights), ``torchvision:resnet50.IMAGENET1K_V2`` (with ``pretrained``:
    those weights, downloaded by torchvision) as an adapted classifier; ``weights_file``: the network's own
    state_dict (checked strictly); ``kwargs`` go to the builder."""
    import torchvision.models
    name, _, tag = spec[len(TORCHVISION_PREFIX):].partition('.')
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f'{spec!r}: unknown torchvision classification model {name!r}; '
                         f'see torchvision.models.list_models(module=torchvision.models)')
    weights = None
    if tag and pretrained:
        try:
            weights = torchvision.models.get_model_weights(name)[tag]
        except KeyError:
            raise ValueError(f'{spec!r}: {name} has no weights {tag!r}; it has '
                             f'{[w.name for w in torchvision.models.get_model_weights(name)]}') from None
    try:
        network = torchvision.models.get_model(name, weights=weights, **kwargs)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a truncated download a RuntimeError
        if weights is None:
            raise
        raise OSError(f'{spec!r}: torchvision could not download {weights} ({first_line(e)}). Offline, save the '
                      f"network's state_dict where it can be downloaded and give that file with model.backbone="
                      f'{TORCHVISION_PREFIX}{name}') from e
    if weights_file is not None:
        from ..weights import load_weights
        load_weights(network, weights_file)
    cfg = _torchvision_cfg(name)
    return ClassifierAdapter(network, f'{TORCHVISION_PREFIX}{name}', cfg.get('input_size'), cfg)
