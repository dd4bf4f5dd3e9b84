"""The heads of a WAE model: the fusion head on concat(fL, fH) and the released VGG's matrix-product MLP."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead
from timm.models.vgg import ConvMlp
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ['FlatMlp', 'FusionHead', 'mlp_head_shape', 'join_features', 'is_tracing']


def is_tracing() -> bool:
    """A trace (torch.jit.trace, torch.fx) records ops, not Python decisions on shapes or dtypes."""
    if not torch.jit.is_scripting():
        return torch.jit.is_tracing() or is_fx_symbolic_tracing()
    return False


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
        if is_tracing() or x.shape[-2:] != (self.kernel, self.kernel):  # pooling to the same size is the identity
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


def join_features(f_low: Tensor, f_high: Tensor) -> Tensor:
    """concat(fL, fH), fH average-pooled to fL's size where they differ (always pooled in a
    trace, where it is the identity for equal sizes: no Python branch on shapes)."""
    if is_tracing() or f_high.shape[-2:] != f_low.shape[-2:]:
        f_high = F.adaptive_avg_pool2d(f_high, f_low.shape[-2:])
    return torch.cat([f_low, f_high], dim=1)
