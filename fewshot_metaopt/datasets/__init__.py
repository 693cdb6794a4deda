"""Few-shot task families: Omniglot, miniImageNet, the sinusoid family and embedded glyphs."""

from ..episodes.task_family import TaskFamily
from .base import ClassImageDataset
from .glyphs import Glyphs
from .miniimagenet import MiniImageNet
from .omniglot import Omniglot
from .sinusoid import Sinusoid

__all__ = ["ClassImageDataset", "Glyphs", "MiniImageNet", "Omniglot", "Sinusoid", "TaskFamily"]
