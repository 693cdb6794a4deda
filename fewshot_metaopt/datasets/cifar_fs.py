"""CIFAR-FS (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers"):
the 100 CIFAR-100 classes split 64/16/20 into train/val/test, 600 32 x 32 images each.

The class lists ship with the package (``datasets/splits/cifar_fs/``). They are the lists of
torchmeta's CIFAR-FS assets, which cite Bertinetto et al. and stand for the
``splits/bertinetto/{train,val,test}.txt`` files of the authors' release; they were not
compared with that release here. The images come from the official CIFAR-100 python archive
(see :mod:`.cifar100`), which ``download=True`` fetches and md5-checks.

>>> train = CIFARFS("~/data/cifar100", split="train", download=True)
>>> episode = train.sample_episode(5, 1, 15, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from .cifar100 import CIFAR100Classes


class CIFARFS(CIFAR100Classes):
    """CIFAR-FS: ``split`` ``"train"`` (64 classes), ``"val"`` (16), ``"test"`` (20) or
    ``"trainval"`` (80), uint8 ``(3, image_size, image_size)`` images, 600 a class.

    Args:
        root: the folder holding ``cifar-100-python.tar.gz`` or its extracted
            ``cifar-100-python/``.
        split: which classes.
        download: fetch the archive (161 MB, md5-checked) when ``root`` lacks it.
        cache_dir: where the images grouped by class are cached (default
            :func:`fewshot_metaopt.datasets.cache.default_cache_dir`).
        image_size: side of the images (32, CIFAR's own; others are LANCZOS-resized once).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        base_url: a mirror holding the official archive.
    """

    NAME = "CIFAR-FS"
    SPLITS = "cifar_fs"
    LEVEL = "fine"
