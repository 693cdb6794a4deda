"""FC100 (Oreshkin et al. 2018, "TADAM: Task dependent adaptive metric for improved few-shot
learning"): CIFAR-100 split by superclass, so that train, val and test classes share no
superclass: 12/4/4 superclasses, 60/20/20 classes, 600 32 x 32 images each.

The superclass lists ship with the package (``datasets/splits/fc100/``): train fish, flowers,
food containers, fruit and vegetables, household electrical devices, household furniture,
large man-made outdoor things, large natural outdoor scenes, reptiles, trees, vehicles 1 and
2; val large carnivores, large omnivores and herbivores, non-insect invertebrates, small
mammals; test aquatic mammals, insects, medium mammals, people (CIFAR-100 superclasses 1-6,
9, 10, 15, 17-19 / 8, 11, 13, 16 / 0, 7, 12, 14). They are the lists of torchmeta's FC100
assets, which cite Oreshkin et al.; they were not compared with the authors' own release
here. The images come from the official CIFAR-100 python archive (see :mod:`.cifar100`),
which ``download=True`` fetches and md5-checks.
"""

from __future__ import annotations

from .cifar100 import CIFAR100Classes


class FC100(CIFAR100Classes):
    """FC100: ``split`` ``"train"`` (60 classes of 12 superclasses), ``"val"`` (20 of 4),
    ``"test"`` (20 of 4) or ``"trainval"`` (80); the arguments are :class:`CIFARFS`'s.
    ``superclasses`` names each class's superclass."""

    NAME = "FC100"
    SPLITS = "fc100"
    LEVEL = "coarse"
