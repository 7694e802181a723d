"""What a run records about itself at start: class counts and weights, the dataset fingerprint,
the JAX devices and the resolved config (``<workdir>/run_info.json``).

The fingerprint also goes into every checkpoint, so a resumed run can tell that its data changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

RUN_INFO_FILE = "run_info.json"
DATASET_INFO = "dataset_info.json"


def datasets_fingerprint(builders: Mapping[str, object]) -> str:
    """One fingerprint for the datasets a run reads (source name -> builder): a single one's own
    (``dataset_fingerprint``), else a digest of each source's name and fingerprint, so that rebuilding
    any source of a union refuses a resume and an evaluation's fitted files."""
    fingerprints = {name: dataset_fingerprint(builder) for name, builder in builders.items()}
    if len(fingerprints) == 1:
        return next(iter(fingerprints.values()))
    text = "".join(f"{name}:{fingerprint}\n" for name, fingerprint in fingerprints.items())
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_fingerprint(builder) -> str:
    """sha256 of the built dataset's ``dataset_info.json`` and the names and sizes of its files.

    Cheap (no data is read) and changes whenever a rebuild writes different shards.
    """
    data_dir = Path(builder.data_dir)
    digest = hashlib.sha256((data_dir / DATASET_INFO).read_bytes())
    for path in sorted(data_dir.iterdir()):
        if path.is_file():
            digest.update(f"{path.name}:{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()


def write(
    workdir: Path,
    *,
    config,
    dataset_name: str,
    fingerprint: str,
    task,
    train_counts: list[int],
    class_weights: np.ndarray,
    steps_per_epoch: int,
    num_train_steps: int,
) -> None:
    if jax.process_index() != 0:
        return
    (workdir / RUN_INFO_FILE).write_text(
        json.dumps(
            {
                "dataset": dataset_name,
                "dataset_fingerprint": fingerprint,
                "task": task.name,
                "train_class_counts": dict(zip(task.class_names, train_counts, strict=True)),
                "class_weights": dict(zip(task.class_names, class_weights.tolist(), strict=True)),
                "devices": [str(d) for d in jax.devices()],
                "process_count": jax.process_count(),
                "steps_per_epoch": steps_per_epoch,
                "num_train_steps": num_train_steps,
                "config": config.to_dict(),
            },
            indent=2,
        )
    )
