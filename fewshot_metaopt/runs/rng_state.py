"""Seeding and saving every global random number generator a run may touch.

The library draws episodes from its samplers' own generators, but user code, torch layers
(dropout, init) and third-party code reach for the global torch, NumPy and Python RNGs, and
CUDA kernels for the per-GPU CUDA generators; a checkpoint keeps them all so that a resumed run
draws exactly what an uninterrupted one would. States are stored as tensors and plain values
only, so ``weights_only`` loading reads them.

A checkpoint may be loaded onto another device than the one that wrote it (``map_location``
puts every tensor on the run's device), but generators take their states as CPU ByteTensors
only, so every state is copied to the CPU before it is applied.

``"cuda"`` is a list with one state per visible GPU, empty where the process never initialised
CUDA (a run without a GPU, even on a machine that has one: reading the states would initialise
CUDA and take GPU memory, and generators never used are still where seeding put them). So a
checkpoint moves between machines either way:

- written without CUDA, resumed with it: the CUDA generators keep the states
  :func:`seed_everything` gave them, which is where a run that never used a GPU left them;
- written with CUDA, resumed without it: the CUDA states are dropped (nothing holds them);
- written and resumed on different GPU counts: the GPUs both machines have get their states,
  the saved states of GPUs this machine lacks are dropped, and its extra GPUs stay seeded.

Checkpoints written before ``"cuda"`` existed hold no such key and read as "no CUDA states".
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too (lazily, when CUDA is first used)


def host(state: Tensor) -> Tensor:
    """``state`` as a CPU tensor, as ``Generator.set_state`` and ``torch.set_rng_state``
    require, whatever device ``map_location`` loaded it onto."""
    return state.cpu()


def capture() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
    }


def restore(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": host(n["key"]).numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    torch.set_rng_state(host(state["torch"]))
    cuda = [host(s) for s in state.get("cuda", [])]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
