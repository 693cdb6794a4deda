"""Few-shot task families: Omniglot, miniImageNet, the sinusoid family and embedded glyphs."""

from ..episodes.task_family import TaskFamily
from .base import ClassImageDataset
from .cifar_fs import CIFARFS
from .cub import CUB
from .fc100 import FC100
from .glyphs import Glyphs
from .miniimagenet import MiniImageNet
from .miniimagenet_hdf5 import MiniImageNetHDF5
from .omniglot import Omniglot
from .sinusoid import Sinusoid
from .tiered_imagenet import TieredImageNet

__all__ = ["CIFARFS", "CUB", "FC100", "ClassImageDataset", "Glyphs", "MiniImageNet", "MiniImageNetHDF5", "Omniglot", "Sinusoid", "TaskFamily", "TieredImageNet"]
