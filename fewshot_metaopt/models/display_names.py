"""Readable names of a model's parameters, for tables and plots."""

from __future__ import annotations

from torch import nn

from .batch_norm import PerStepBatchNorm2d

# What a layer is called inside its block, by kind; a kind not listed goes by its class name.
LAYER_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, PerStepBatchNorm2d), "bn"),
    ((nn.LayerNorm, nn.GroupNorm), "norm"),
    ((nn.Linear,), "linear"),
)


def _kind(module: nn.Module) -> str:
    return next((name for types, name in LAYER_KINDS if isinstance(module, types)), type(module).__name__.lower())


def _child_labels(sequential: nn.Sequential, top: bool) -> dict[str, str]:
    """Readable names of the children of ``sequential`` that hold parameters: ``block1`` ... for
    nested blocks, ``conv``, ``bn`` ... for layers (numbered when a kind repeats), and ``head``
    for a linear layer that ends the whole model."""
    children = [(index, child) for index, child in sequential._modules.items()
                if child is not None and any(True for _ in child.parameters())]
    kinds = {index: "block" if isinstance(child, nn.Sequential) else _kind(child) for index, child in children}
    if top and children and isinstance(children[-1][1], nn.Linear):
        kinds[children[-1][0]] = "head"
    labels, seen = {}, {}
    for index, kind in kinds.items():
        seen[kind] = seen.get(kind, 0) + 1
        repeated = kind == "block" or list(kinds.values()).count(kind) > 1
        labels[index] = f"{kind}{seen[kind]}" if repeated else kind
    return labels


def parameter_display_names(model: nn.Module) -> dict[str, str]:
    """Readable names of ``model``'s parameters for tables and plots, keyed by the names
    ``named_parameters()`` and ``state_dict()`` use (which stay as they are, so that saved
    weights keep loading).

    A model that has a ``parameter_display_names()`` method publishes its own. An
    ``nn.Sequential`` (conv4, mlp) is named from its structure: conv4's ``0.0.weight`` is
    ``block1.conv.weight``, ``0.1.bias`` is ``block1.bn.bias`` and ``5.weight`` is
    ``head.weight``; mlp's layers are ``linear1``, ``linear2``, ..., ``head``. Any other model
    keeps its own names, which are attribute names already.
    """
    published = getattr(model, "parameter_display_names", None)
    if callable(published):
        return dict(published())
    names = {name: name for name, _ in model.named_parameters()}
    if not isinstance(model, nn.Sequential):
        return names
    labels: dict[int, dict[str, str]] = {}
    for name in names:
        *path, leaf = name.split(".")
        module, readable = model, []
        for part in path:
            if isinstance(module, nn.Sequential):
                if id(module) not in labels:
                    labels[id(module)] = _child_labels(module, top=module is model)
                readable.append(labels[id(module)][part])
            else:
                readable.append(part)
            module = module._modules[part]
        names[name] = ".".join([*readable, leaf])
    # Distinct names or none: a table whose rows could be confused is worse than raw indices.
    return names if len(set(names.values())) == len(names) else {name: name for name in names}
