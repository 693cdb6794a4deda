"""The networks of the few-shot literature, as modules the engines adapt: conv-4 and MLPs as
plain ``nn.Sequential`` modules, a small residual conv net, ResNet-12 and WRN-28-10; and the
batch-norm modes they share (:mod:`.batch_norm`: transductive, or MAML++'s per-step statistics
and weights).

Every classifier's head is its last module, which ANIL adapts alone. With the default
``batch_norm="transductive"`` batch norm keeps no running statistics
(``track_running_stats=False``): every forward pass, training or evaluation, normalises with
the statistics of the batch it sees. This is the transductive setting of MAML's reference
code, and it means adaptation never writes buffers.
"""

from .batch_norm import BATCH_NORMS, PER_STEP, TRANSDUCTIVE, PerStepBatchNorm2d, batch_norm_2d
from .conv4 import conv4, conv_block
from .display_names import LAYER_KINDS, parameter_display_names
from .drop_block import DropBlock
from .inner_step import InnerStep, current_inner_step, inner_step, scoring
from .mlp import mlp
from .residual import Residual
from .residual_conv_net import ResidualConvNet
from .resnet12 import resnet12, resnet12_block
from .wide_resnet import wide_block, wide_resnet, wrn28_10

__all__ = [
    "BATCH_NORMS", "DropBlock", "InnerStep", "LAYER_KINDS", "PER_STEP", "PerStepBatchNorm2d", "Residual",
    "ResidualConvNet", "TRANSDUCTIVE", "batch_norm_2d", "conv4", "conv_block", "current_inner_step", "inner_step",
    "mlp", "parameter_display_names", "resnet12", "resnet12_block", "scoring", "wide_block", "wide_resnet", "wrn28_10",
]
