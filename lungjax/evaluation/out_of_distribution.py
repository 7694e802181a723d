"""The out-of-distribution score (``fit.ood``) fitted on a model's own features of its dataset's splits.

One function for both users, so that they fit the same way: the export fits it on the features its
exported model file gives (and carries it in the bundle), ``--mode predict`` on the restored model's.
The training films are a deterministic sample of at most ``MAX_FILMS`` evenly spaced over the split
(the mean and covariance of a few thousand films are as good as of all, and a split of 80,000 films
would cost minutes); the validation films are sampled the same way, so the threshold is a quantile of
at most ``MAX_FILMS`` distances (its binomial error at a 5% rate is under half a percentage point).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from lungjax.data import pipeline, records, tasks, union
from lungjax.evaluation.fit import ood

MAX_FILMS = 4096  # per split: the training films whose features are fitted, the validation films that set the threshold
TRAIN_SPLIT, THRESHOLD_SPLIT = "train", "validation"


def training_sources(data_config) -> list[str]:
    """The sources a model was trained on, which its out-of-distribution warning names:
    ``config.data.source``, or each part of a union by its name (``union.part_name``)."""
    return list(union.names_and_weights(data_config)[0])


class _Spread(Sequence):
    """Records ``indices`` of a data source, as a data source of their own (picklable for grain's workers)."""

    def __init__(self, rows, indices: np.ndarray):
        self.rows, self.indices = rows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.rows[int(self.indices[index])]


def spread(source: records.ExampleSource | union.UnionSource, limit: int) -> records.ExampleSource:
    """At most ``limit`` examples of ``source`` (one split, or a union's), evenly spaced over it (first and
    last included), in order."""
    count = min(limit, len(source))
    indices = np.linspace(0, len(source) - 1, count).round().astype(np.int64) if count else np.zeros(0, np.int64)
    return records.ExampleSource(_Spread(source.records, indices), source.specs, f"{source!r}[spread]")


def split_features(
    features_of: Callable[[np.ndarray], np.ndarray],
    source: records.ExampleSource,
    *,
    batch_size: int,
    image_size: int,
    worker_count: int,
    task: tasks.Task | None = None,
) -> np.ndarray:
    """(N, D) float32 features ``features_of`` gives for every example of ``source``, in order (``task``:
    what the records' labels are, ``pipeline.eval_batches``; the features do not depend on it). One process
    (the export and ``--mode predict`` run in one): with several, each would see its range of the split only."""
    if jax.process_count() > 1:
        raise RuntimeError("the out-of-distribution score is fitted in one process; start it without --num_processes")
    features, masks = [], []
    batches = pipeline.eval_batches(
        source, batch_size=batch_size, image_size=image_size, task=task, worker_count=worker_count
    )
    for batch in batches:
        features.append(np.asarray(features_of(batch["image"]), np.float32))
        masks.append(batch["mask"])
    return np.concatenate(features)[np.concatenate(masks).astype(bool)]


def fit_on_splits(
    features_of: Callable[[np.ndarray], np.ndarray],
    builders: Mapping[str, object],
    *,
    task: tasks.Task,
    batch_size: int,
    image_size: int,
    worker_count: int,
    false_alarm_rate: float = ood.DEFAULT_FALSE_ALARM_RATE,
) -> ood.OutOfDistribution:
    """The score fitted on ``features_of``'s features of the training films and thresholded on the
    validation films', each split (of one source, or a union's parts: part name -> builder) sampled by
    ``spread(..., MAX_FILMS)``."""
    features = {
        split: split_features(
            features_of,
            spread(union.split(builders, split), MAX_FILMS),
            batch_size=batch_size,
            image_size=image_size,
            worker_count=worker_count,
            task=task,
        )
        for split in (TRAIN_SPLIT, THRESHOLD_SPLIT)
    }
    return ood.fit(features[TRAIN_SPLIT], features[THRESHOLD_SPLIT], false_alarm_rate)
