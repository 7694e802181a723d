"""Starting a model from weights the user names: a Keras ImageNet ResNet50 file or an earlier run.

``config.model.init_from`` is a path: a ``.h5`` file is read as Keras ResNet50 weights
(:mod:`lungjax.models.pretrained`) or, for a DenseNet-121, as Keras DenseNet121 weights
(:mod:`lungjax.models.pretrained_densenet`); a directory is an earlier lungjax workdir (or its
``checkpoints`` folder), whose latest checkpoint's model item is copied in. Every parameter and
BatchNorm statistic is copied by name; the head is skipped when its shape differs (another class
count), and any other mismatch is an error that names the variable and both shapes. Nothing is
downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lungjax import trees
from lungjax.models import pretrained, pretrained_densenet
from lungjax.models.densenet import DenseNet
from lungjax.models.resnet import HEAD, ResNet

KERAS_SUFFIXES = (".h5",)


def is_keras_weights(init_from: str | os.PathLike) -> bool:
    """Whether ``init_from`` names a Keras weights file (by its suffix: the file may be gone at evaluation)."""
    return Path(init_from).suffix in KERAS_SUFFIXES


def initialize(model: ResNet | DenseNet, init_from: str | os.PathLike) -> list[str]:
    """Overwrites ``model``'s weights from ``init_from``; returns the names of variables left as they were."""
    path = Path(init_from)
    if is_keras_weights(path) and path.is_file():
        if isinstance(model, DenseNet):
            pretrained_densenet.load_keras_densenet121(model, path)
        else:
            pretrained.load_keras_resnet50(model, path)
        return [HEAD]
    if path.is_dir():
        return copy_from_checkpoint(model, path)
    raise FileNotFoundError(
        f"config.model.init_from={str(init_from)!r} is neither a Keras weights "
        "file (.h5) nor a lungjax workdir or checkpoints folder"
    )


def _checkpoint_root(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def copy_from_checkpoint(model: ResNet | DenseNet, path: Path) -> list[str]:
    """Copies the latest checkpoint's ``model`` item into ``model``; returns the skipped names."""
    root = _checkpoint_root(path)
    with ocp.CheckpointManager(
        root, options=ocp.CheckpointManagerOptions(create=False), item_names=("model",)
    ) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"config.model.init_from: no checkpoint in {root}")
        saved = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))["model"]
    # Orbax stores each nnx Variable as a dict holding its ``value``.
    source = {key.removesuffix("/value"): value for key, value in trees.flatten(saved, "/").items()}
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    skipped = []
    for group, state in (("params", params), ("batch_stats", batch_stats)):
        flat = nnx.to_flat_state(state)
        for path, variable in flat:
            name = "/".join(map(str, path))
            key, current = f"{group}/{name}", variable[...]
            if key not in source:
                raise ValueError(
                    f"config.model.init_from: {key} is missing from {root} (step {step}); the architectures differ"
                )
            value = np.asarray(source[key])
            if value.shape != current.shape:
                if not name.startswith(HEAD):
                    raise ValueError(
                        f"config.model.init_from: {key} has shape {value.shape} in {root} "
                        f"but {current.shape} in this model"
                    )
                skipped.append(key)
                continue
            variable[...] = value.astype(current.dtype)
        nnx.update(model, nnx.from_flat_state(flat))
    return skipped
