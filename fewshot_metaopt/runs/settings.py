"""The sections of a task file, one dataclass each, with their defaults and value checks.

The ``[learner]`` section is :class:`~fewshot_metaopt.learners.GradientMetaLearnerConfig`
itself; the other sections are defined here. A field left at ``None`` takes the default of
whatever it configures. Some keys only mean something for one data set, model, schedule or
inner optimizer; each section's :meth:`applicable` says which keys its current choice reads,
so that a key that would be silently ignored is an error instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar

from ..checks import ConfigError, at_least, choose, optional_positive
from ..datasets.class_splits import check_fractions
from ..datasets.omniglot import VINYALS_SPLITS
from ..episodes.augmentation_registry import AUGMENTATIONS
from ..learners.algorithms import owned_keys
from ..learners.config import GradientMetaLearnerConfig
from ..meta_training.rule_registry import RULES
from ..models import BATCH_NORMS
from ..warp.layers import WARP_INITS
from .data_sources import DATASETS, DEFAULT_IMAGE_SIZE
from .model_registry import MODELS
from .schedule_factory import SCHEDULES

WARP_MODELS = tuple(name for name in MODELS if name.startswith("warp_"))
# The networks of regression families (vectors in, not images); every other one takes images.
VECTOR_FAMILIES = ("mlp",)
# A task's name becomes a folder, runs/<name>-<date>-<time>, so it must stay one plain name:
# a separator or a leading dot would put the run elsewhere or hide it.
TASK_NAME = re.compile(r"[\w-][\w.-]{0,99}")
# ``sgd`` is the learner's own rule; the others are the learned rules a MetaOptimizer builds.
INNER_OPTIMIZERS = ("sgd", *RULES.names())
# The roles whose episodes data.augment_splits may name, and those it names unless told.
ROLES = ("train", "val", "test")
AUGMENTED_BY_DEFAULT = ["train"]
NO_AUGMENTATION = "none"


@dataclass
class DataSettings:
    """``[data]``: which data set, where it lives and which of its splits train, validate and test.

    Paths may be relative: to the task file's folder when written there, to the current
    directory when given by ``--data-root`` or ``--set``. ``channels`` (1 or 3), ``seed`` and
    ``split_fractions`` (train, val, test shares of the seeded class split) are the image
    folder's; ``seed`` is also the glyphs' own.

    ``augment`` names the augmentation of an image data set's episodes (``crop_flip_jitter``,
    ``resized_crop_flip_jitter``, ``class_rotation``; unset or ``"none"``: off), applied to the
    episodes of the roles ``augment_splits`` lists: ``["train"]`` unless it says otherwise.
    """

    dataset: str = "glyphs"
    root: str | None = None
    download: bool = False
    splits_dir: str | None = None
    cache_dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    image_size: int | None = None
    seed: int | None = None
    num_characters: int | None = None
    samples_per_class: int | None = None
    noise_std: float | None = None
    channels: int | None = None
    split_fractions: list[float] | None = None
    augment: str | None = None
    augment_splits: list[str] | None = None

    SPLIT_KEYS: ClassVar[tuple[str, ...]] = ("train_split", "val_split", "test_split")
    ONLY: ClassVar[dict[str, tuple[str, ...]]] = {
        "glyphs": ("cache_dir", *SPLIT_KEYS, "image_size", "seed", "num_characters", "samples_per_class"),
        "omniglot": ("root", "download", "splits_dir", "cache_dir", *SPLIT_KEYS, "image_size"),
        "miniimagenet": ("root", "splits_dir", "cache_dir", *SPLIT_KEYS, "image_size"),
        "miniimagenet_hdf5": ("root", *SPLIT_KEYS, "image_size"),
        "tieredimagenet": ("root", "cache_dir", *SPLIT_KEYS, "image_size"),
        "cifar_fs": ("root", "download", "cache_dir", *SPLIT_KEYS, "image_size"),
        "fc100": ("root", "download", "cache_dir", *SPLIT_KEYS, "image_size"),
        "cub": ("root", "cache_dir", *SPLIT_KEYS, "image_size"),
        "image_folder": ("root", "splits_dir", "cache_dir", *SPLIT_KEYS, "image_size", "channels", "seed",
                         "split_fractions"),
        "sinusoid": ("noise_std",),
    }

    def __post_init__(self) -> None:
        choose("data.dataset", self.dataset, DATASETS.names())
        for key in ("image_size", "num_characters", "samples_per_class"):
            at_least(f"data.{key}", getattr(self, key), 1)
        at_least("data.noise_std", self.noise_std, 0.0)
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise ConfigError("data.channels", f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if self.split_fractions is not None:
            try:
                check_fractions(self.split_fractions, "data")
            except ValueError as err:
                raise ConfigError("data.split_fractions", f"data.{str(err).removeprefix('data: ')}") from None
        self._check_augmentation()

    def _check_augmentation(self) -> None:
        if self.augment is not None:
            choose("data.augment", self.augment, (NO_AUGMENTATION, *AUGMENTATIONS.names()))
        if self.augment_splits is not None:
            if not self.augment_splits or len(set(self.augment_splits)) != len(self.augment_splits):
                raise ConfigError("data.augment_splits", f"data.augment_splits must list distinct roles among "
                                                         f"{', '.join(ROLES)}, got {self.augment_splits!r}")
            for role in self.augment_splits:
                choose("data.augment_splits", role, ROLES)

    def rotation_clash(self) -> tuple[str, str] | None:
        """The split key and the reason why ``class_rotation`` cannot augment that split, or None
        when it can augment them all (a check of keys together, made once each is right)."""
        vinyals = [role for role in self.augmented_roles() if self.split(role) in VINYALS_SPLITS]
        if self.dataset != "omniglot" or self.augment != "class_rotation" or not vinyals:
            return None
        # Vinyals et al.'s classes are the four turns of each character already: turned again,
        # two labels of an episode could be one picture.
        return f"data.{vinyals[0]}_split", (f"data.augment 'class_rotation' would turn Omniglot's Vinyals classes (data.{vinyals[0]}_split "
                f"{self.split(vinyals[0])!r}), which are already the four turns of each character; use the Lake "
                f"splits background and evaluation, or another data.augment")

    def augmented_roles(self) -> list[str]:
        """The roles (``train``, ``val``, ``test``) whose episodes are augmented."""
        if self.augment in (None, NO_AUGMENTATION):
            return []
        return list(self.augment_splits or AUGMENTED_BY_DEFAULT)

    def augmentation(self, role: str) -> str | None:
        """The name of the augmentation of ``role``'s episodes, or None."""
        return self.augment if role in self.augmented_roles() else None

    def applicable(self) -> set[str]:
        keys = {"dataset", *self.ONLY[self.dataset]}
        if self.dataset in DEFAULT_IMAGE_SIZE:  # the image data sets
            keys.add("augment")
            if self.augmented_roles():
                keys.add("augment_splits")
        return keys

    def split(self, role: str) -> str:
        """The data set's split that plays ``role`` (``train``, ``val`` or ``test``)."""
        return getattr(self, f"{role}_split")


@dataclass
class EpisodeSettings:
    """``[episodes]``: N-way K-shot with ``queries`` query examples per class.

    ``ways`` defaults to 5 for image data and 1 for regression; ``eval_queries`` (validation
    and test episodes) defaults to ``queries``.
    """

    ways: int | None = None
    shots: int = 1
    queries: int = 15
    eval_queries: int | None = None

    def __post_init__(self) -> None:
        at_least("episodes.ways", self.ways, 1)
        at_least("episodes.shots", self.shots, 1)
        at_least("episodes.queries", self.queries, 1)
        at_least("episodes.eval_queries", self.eval_queries, 1)

    def applicable(self) -> set[str]:
        return {"ways", "shots", "queries", "eval_queries"}


@dataclass
class ModelSettings:
    """``[model]``: ``conv4`` (Finn et al.; ``channels`` filters per layer, default 64),
    ``resnet12`` (MetaOptNet's ResNet-12; ``drop_rate`` > 0 turns on its DropBlock, of
    ``dropblock_size``) and ``wrn28_10`` (WRN-28-10) for images, ``mlp`` (``hidden_layers``
    widths, default ``[40, 40]``) for regression, and the Warp-Grad forms ``warp_conv4`` and
    ``warp_mlp`` (Flennerhag et al. 2020: a warp layer after each hidden block, shaped by the
    ``warp_*`` keys; see :mod:`fewshot_metaopt.warp`). ``batch_norm`` (conv4, resnet12,
    wrn28_10): ``"transductive"`` (the default) or MAML++'s ``"per_step"``, with
    ``learner.inner_steps`` steps (see :mod:`fewshot_metaopt.models.batch_norm`)."""

    name: str = "conv4"
    channels: int | None = None
    hidden_layers: list[int] | None = None
    batch_norm: str | None = None
    drop_rate: float | None = None
    dropblock_size: int | None = None
    warp_batch_norm: bool | None = None
    warp_activation: bool | None = None
    warp_residual: bool | None = None
    warp_init: str | None = None

    WARP_KEYS: ClassVar[tuple[str, ...]] = ("warp_batch_norm", "warp_activation", "warp_residual", "warp_init")
    ONLY: ClassVar[dict[str, tuple[str, ...]]] = {
        "conv4": ("channels", "batch_norm"),
        "resnet12": ("batch_norm", "drop_rate", "dropblock_size"),
        "wrn28_10": ("batch_norm",),
        "mlp": ("hidden_layers",),
        "warp_conv4": ("channels", *WARP_KEYS),
        "warp_mlp": ("hidden_layers", *WARP_KEYS),
    }

    def __post_init__(self) -> None:
        choose("model.name", self.name, MODELS.names())
        at_least("model.channels", self.channels, 1)
        if self.hidden_layers is not None and (not self.hidden_layers or min(self.hidden_layers) < 1):
            raise ConfigError("model.hidden_layers", f"model.hidden_layers must list positive widths, got {self.hidden_layers}")
        if self.warp_init is not None:
            choose("model.warp_init", self.warp_init, WARP_INITS)
        if self.batch_norm is not None:
            choose("model.batch_norm", self.batch_norm, BATCH_NORMS.names())
        if self.drop_rate is not None and not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError("model.drop_rate", f"model.drop_rate must be in [0, 1), got {self.drop_rate}")
        at_least("model.dropblock_size", self.dropblock_size, 1)

    def applicable(self) -> set[str]:
        return {"name", *self.ONLY[self.name]}

    @property
    def warped(self) -> bool:
        return self.name in WARP_MODELS

    @property
    def family(self) -> str:
        """``conv4``, ``resnet12``, ``wrn28_10`` or ``mlp``: the network the model is, with or
        without warp layers."""
        return self.name.removeprefix("warp_")

    @property
    def takes_images(self) -> bool:
        return self.family not in VECTOR_FAMILIES

    def warp_options(self) -> dict:
        """The warp-layer arguments this section sets (``batch_norm=...``, ``init=...``)."""
        return {key.removeprefix("warp_"): getattr(self, key)
                for key in self.WARP_KEYS if getattr(self, key) is not None}


@dataclass
class InnerOptimizerSettings:
    """``[inner_optimizer]``: the inner-loop update rule.

    ``sgd`` is the learner's own rule (MAML's fixed lr, Meta-SGD's learned one, as the
    ``[learner]`` algorithm says). The learned optimizers (``meta_sgd``, ``lstm``, ``l2o``) are
    :class:`~fewshot_metaopt.optim.MetaOptimizer` rules, meta-trained with the initialisation;
    the other keys are the :class:`~fewshot_metaopt.optim.MetaOptimizerConfig` fields that
    shape the rule (unset: that config's default). ``warp_grad`` is a valid name that a task
    refuses, pointing to the Warp-Grad learner algorithms (see ``task_config``).
    """

    method: str = "sgd"
    hidden_size: int | None = None
    num_layers: int | None = None
    preconditioning: bool | None = None
    lstm_variant: str | None = None
    inner_lr: float | None = None
    second_order: bool | None = None
    output_scale: float | None = None

    RULE_KEYS: ClassVar[tuple[str, ...]] = (
        "hidden_size", "num_layers", "preconditioning", "lstm_variant", "inner_lr", "second_order", "output_scale",
    )

    def __post_init__(self) -> None:
        choose("inner_optimizer.method", self.method, INNER_OPTIMIZERS)

    def applicable(self) -> set[str]:
        return {"method"} if self.method == "sgd" else {"method", *self.RULE_KEYS}

    def rule_settings(self) -> dict:
        """The MetaOptimizerConfig keys this section sets."""
        return {key: getattr(self, key) for key in self.RULE_KEYS if getattr(self, key) is not None}


@dataclass
class ScheduleSettings:
    """``[meta_schedule]``: the meta learning rate over iterations, as a multiplier of
    ``learner.meta_lr`` (see :mod:`fewshot_metaopt.optim.schedules`). ``cosine`` decays over
    ``train.iterations``."""

    name: str = "constant"
    min_factor: float | None = None
    warmup_steps: int | None = None
    steps: int | None = None
    start: float | None = None
    period: float | None = None
    low: float | None = None
    high: float | None = None
    mode: str | None = None

    ONLY: ClassVar[dict[str, tuple[str, ...]]] = {
        "constant": (),
        "cosine": ("min_factor", "warmup_steps"),
        "warmup": ("steps", "start"),
        "cyclical": ("period", "low", "high", "mode"),
    }

    def __post_init__(self) -> None:
        choose("meta_schedule.name", self.name, SCHEDULES.names())

    def applicable(self) -> set[str]:
        return {"name", *self.ONLY[self.name]}

    def arguments(self) -> dict:
        return {key: getattr(self, key) for key in self.ONLY[self.name] if getattr(self, key) is not None}


@dataclass
class TrainSettings:
    """``[train]``: the budget (``iterations`` and/or wall-clock ``minutes``, both finite;
    training stops at whichever comes first, and an unset one sets no limit), episodes per
    meta-iteration, and how often a metrics line and a checkpoint are written."""

    iterations: int | None = None
    minutes: float | None = None
    meta_batch: int = 32
    log_every: int = 10
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.iterations is None and self.minutes is None:
            raise ConfigError("train.iterations", "the budget needs train.iterations or train.minutes (or both)")
        at_least("train.iterations", self.iterations, 1)
        optional_positive("train.minutes", self.minutes)
        for key in ("meta_batch", "log_every", "checkpoint_every"):
            at_least(f"train.{key}", getattr(self, key), 1)

    def applicable(self) -> set[str]:
        return {"iterations", "minutes", "meta_batch", "log_every", "checkpoint_every"}


@dataclass
class ValidationSettings:
    """``[validation]``: every ``every`` iterations (0: never) the model is scored on a fixed
    manifest of ``episodes`` validation episodes; the best score keeps its checkpoint."""

    every: int = 500
    episodes: int = 100

    def __post_init__(self) -> None:
        at_least("validation.every", self.every, 0)
        at_least("validation.episodes", self.episodes, 1)

    def applicable(self) -> set[str]:
        return {"every", "episodes"}


@dataclass
class EvaluationSettings:
    """``[evaluation]``: the final test on a fixed manifest of ``episodes`` test episodes."""

    episodes: int = 600

    def __post_init__(self) -> None:
        at_least("evaluation.episodes", self.episodes, 1)

    def applicable(self) -> set[str]:
        return {"episodes"}


@dataclass
class TopLevel:
    """The keys outside any section: the task's ``name``, a ``description`` and the ``seed``
    of the whole run (model initialisation, training episodes, validation and test manifests).

    ``name`` names the run directory, ``runs/<name>-<date>-<time>``: letters, digits, ``-``,
    ``_`` and ``.``, at most 100 characters, not starting with ``.``.
    """

    name: str = "task"
    description: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TASK_NAME.fullmatch(self.name):
            raise ConfigError("name", f"name must be a plain file name (letters, digits, '-', '_' and '.', at most "
                                      f"100 characters, not starting with '.'), since it names the run directory "
                                      f"runs/<name>-<date>-<time>; got {self.name!r}")

    def applicable(self) -> set[str]:
        return {"name", "description", "seed"}


def learner_applicable(config: GradientMetaLearnerConfig) -> set[str]:
    """The ``[learner]`` keys ``config``'s algorithm reads: all but those that only other
    algorithms read (``Algorithm.keys``: the Warp-Grad algorithms' ``warp_*``, iMAML's
    ``imaml_lambda``, ``cg_steps`` and ``cg_damping``)."""
    names = {f.name for f in fields(config)}
    return (names - owned_keys()) | set(config.method.keys)


@dataclass
class LoggingSettings:
    """``[logging]``: where a run is mirrored besides ``metrics.jsonl``, which stays its source
    of truth (docs/tracking.md). ``tensorboard`` writes ``RUN_DIR/tensorboard``; ``wandb`` logs
    to Weights & Biases (``wandb_mode = "offline"`` keeps it in ``RUN_DIR/wandb``); ``mlflow``
    logs to MLflow's tracking store (``mlflow_tracking_uri``, default MLflow's own setting).
    Each needs its extra: ``pip install 'fewshot-metaopt[tensorboard]'`` and so on. Logging
    never changes what a run computes, so it may be changed in a run's config.toml before
    ``--resume``."""

    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_mode: str | None = None
    mlflow: bool = False
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None

    WANDB_MODES: ClassVar[tuple[str, ...]] = ("online", "offline")
    # The keys of a tracker that is on: its own switch is read always.
    ONLY: ClassVar[dict[str, tuple[str, ...]]] = {
        "tensorboard": (),
        "wandb": ("wandb_project", "wandb_entity", "wandb_mode"),
        "mlflow": ("mlflow_tracking_uri", "mlflow_experiment"),
    }

    def __post_init__(self) -> None:
        if self.wandb_mode is not None:
            choose("logging.wandb_mode", self.wandb_mode, self.WANDB_MODES)

    def applicable(self) -> set[str]:
        return {*self.ONLY, *(key for name in self.enabled() for key in self.ONLY[name])}

    def enabled(self) -> list[str]:
        """The trackers switched on, by name (the names of ``trackers.TRACKERS``)."""
        return [name for name in self.ONLY if getattr(self, name)]


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "episodes": EpisodeSettings,
    "model": ModelSettings,
    "inner_optimizer": InnerOptimizerSettings,
    "meta_schedule": ScheduleSettings,
    "train": TrainSettings,
    "validation": ValidationSettings,
    "evaluation": EvaluationSettings,
    "logging": LoggingSettings,
}
