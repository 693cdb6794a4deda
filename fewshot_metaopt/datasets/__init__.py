"""Few-shot task families: Omniglot, miniImageNet, the sinusoid family and embedded glyphs."""

from .base import ClassImageDataset, TaskFamily
from .glyphs import Glyphs
from .miniimagenet import MiniImageNet
from .omniglot import Omniglot
from .sinusoid import Sinusoid

__all__ = ["ClassImageDataset", "Glyphs", "MiniImageNet", "Omniglot", "Sinusoid", "TaskFamily"]
