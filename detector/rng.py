"""Random-number generator states of one process, as plain data a weights_only checkpoint can hold.

    states = dist.all_gather_objects(rng_state())   # every rank's, saved in rank order
    set_rng_state(states[rank])                      # the resumed rank continues its own streams

Python's `random`, NumPy's global generator, torch's CPU generator and each CUDA device's. Data augmentation does
not draw from these (each image's draws are seeded from the seed, epoch and position: data/sample_seeds.py), so
restoring them matters for whatever else draws in the training process.
"""
import random

import numpy as np
import torch


def rng_state():
    """{'python': (version, ints, gauss), 'numpy': [...], 'torch': uint8 tensor, 'cuda': [uint8 tensor per GPU]}."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Restore what rng_state() returned (CUDA states only where this process sees as many GPUs)."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
