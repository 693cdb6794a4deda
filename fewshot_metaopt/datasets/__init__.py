"""Few-shot task families: Omniglot, miniImageNet (three layouts), tieredImageNet, CIFAR-FS, FC100,
CUB, your own image folders or labelled datasets, the sinusoid family and embedded glyphs."""

from ..episodes.task_family import TaskFamily
from .base import ClassImageDataset
from .cifar_fs import CIFARFS
from .cub import CUB
from .episode_manifest import ManifestEpisodes, load_manifest, save_manifest
from .fc100 import FC100
from .glyphs import Glyphs
from .image_folder import ImageFolder
from .labelled_dataset import from_labelled_dataset
from .miniimagenet import MiniImageNet
from .miniimagenet_hdf5 import MiniImageNetHDF5
from .omniglot import Omniglot
from .sinusoid import Sinusoid
from .tiered_imagenet import TieredImageNet

__all__ = [
    "CIFARFS", "CUB", "FC100", "ClassImageDataset", "Glyphs", "ImageFolder", "MiniImageNet", "MiniImageNetHDF5",
    "ManifestEpisodes", "Omniglot", "Sinusoid", "TaskFamily", "TieredImageNet", "from_labelled_dataset", "load_manifest",
    "save_manifest",
]
