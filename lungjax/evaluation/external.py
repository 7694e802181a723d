"""External validation: trained runs scored on other sources' test splits (``--mode external``), and one
run evaluated on another source (``--mode evaluate`` with ``config.eval.source``).

``config.external.runs`` names the workdirs of trained runs, ``config.external.tests`` the test sources as
``(source, manual_dir)`` pairs (a download's folder, or ``phantom[:site]``). Each test source is built
once per stored size under ``<workdir>/tfds/<its name>`` (``union.part_name``: the name a union of the
same folder trains under, so a run's own sources are recognised as internal), each run predicts each
test split with its chosen checkpoint, and ``<workdir>/external/report.{html,json,md}`` holds the matrix,
the gaps, the transfer of the validation-fitted operating points and temperatures, and the shortcut
probes (``sections.cross_dataset``). Runs must train a label set (masked multi-label): the matrix scores
labels by name across sources.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from lungjax import folders
from lungjax.data import pipeline, union
from lungjax.evaluation import evaluate, external_sources, inference, out_of_distribution
from lungjax.evaluation.fit import validation as validation_fit
from lungjax.evaluation.render import cross_dataset as render
from lungjax.evaluation.sections import cross_dataset
from lungjax.evaluation.stats import separability
from lungjax.runtime import run_info, sharding
from lungjax.runtime import workdir as workdir_lib

EXTERNAL_DIR = "external"
PIXEL_PROBE_SIZE = 16  # the pixel probe reads films block-averaged to 16 x 16


def probe_films(source, task, image_size: int, count: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(films (n, S, S, 1) uint8, patient ids (n,)): at most ``count`` films of a test split evenly spread
    over it (``out_of_distribution.spread``), as a model sees them: what the shortcut probes read."""
    films, patients = [], []
    sample = out_of_distribution.spread(source, count)
    for batch in pipeline.eval_batches(sample, batch_size=batch_size, image_size=image_size, task=task):
        films.append(batch["image"][batch["mask"]])
        patients.append(batch["patient_id"][batch["mask"]].astype(str))
    return np.concatenate(films), np.concatenate(patients)


def features_of_films(features_of, films: np.ndarray, batch_size: int) -> np.ndarray:
    """(n, D) float32 features of ``films`` (n, S, S, 1), fed in padded batches of ``batch_size``."""
    out = []
    for start in range(0, len(films), batch_size):
        chunk = films[start : start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(features_of(padded), np.float32)[: len(chunk)])
    return np.concatenate(out)


def _probe(features: np.ndarray, probe: dict, config) -> dict:
    """``separability.shortcut_probe`` of one kind of features over the probe films of every test source."""
    return separability.shortcut_probe(
        features,
        np.concatenate([[part] * len(films) for part, (films, _) in probe.items()]),
        np.concatenate([patients for _, patients in probe.values()]),
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )


def external_report(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Scores every run of ``config.external.runs`` on every test source of ``config.external.tests`` and
    writes ``<workdir>/external/report.{html,json,md}``; returns the report.

    Besides the matrix (``sections.cross_dataset``): each run's out-of-distribution score
    (``out_of_distribution.fit_on_splits`` on its own training and validation films, as its export
    fits it) on every test source's films, and the shortcut probes, on the test films' raw block means
    and on each run's penultimate features."""
    if jax.process_count() > 1:
        raise external_sources.ExternalError("--mode external runs in one process: start it without --num_processes")
    if not config.external.runs or not config.external.tests:
        raise external_sources.ExternalError(
            "--mode external needs config.external.runs (trained workdirs) and config.external.tests "
            "((source, manual_dir) pairs)"
        )
    workdir = Path(workdir)
    workdir_lib.check_output(workdir / EXTERNAL_DIR)
    mesh = sharding.make_mesh()
    batch_size = sharding.process_batch_size(config.eval.batch_size)
    runs, tests, probe, run_features, ood = [], [], {}, {}, {}
    for run_dir in config.external.runs:
        restored, builders, predict = evaluate.predictor(
            config, Path(run_dir), mesh, config.eval.checkpoint, own_run=False
        )
        task = restored.task
        if not task.masked:
            raise external_sources.ExternalError(
                f"{run_dir} trains data.task={task.name!r}; an external matrix scores labels by name, "
                "so its runs train a label set (config.data.labels)"
            )
        name = external_sources.run_name(run_dir)
        if any(run.name == name for run in runs):
            raise external_sources.ExternalError(f"two runs named {name!r} (the workdirs' folder names): rename one")
        fitted_for = validation_fit.FittedFor(
            restored.step, restored.params_sha256, run_info.datasets_fingerprint(builders)
        )
        fit = validation_fit.fit_on_validation(config, predict("validation"), task, fitted_for)
        runs.append(
            cross_dataset.Run(
                name, external_sources.trained_on(restored.config), task.class_names, predict("test"), fit
            )
        )
        with_features = inference.make_predict_fn(
            restored.graphdef, mesh, restored.dtype, multi_label=True, with_features=True
        )

        def features_of(images, with_features=with_features, state=restored.model_state):
            return with_features(state, images)[1]

        unlike = out_of_distribution.fit_on_splits(
            features_of,
            builders,
            task=task,
            batch_size=batch_size,
            image_size=restored.config.image_size,
            worker_count=config.worker_count,
        )
        ood[name] = {"threshold": unlike.threshold, "false_alarm_rate": unlike.false_alarm_rate, "per_source": {}}
        run_features[name] = {}
        for source, manual_dir in config.external.tests:
            builder = external_sources.build(restored.config.data, source, manual_dir, workdir)
            part = union.part_name(source, manual_dir)
            logging.info("external: %s on %s", name, part)
            predictions = predict("test", {part: builder})
            tests.append(cross_dataset.TestSet(name, part, external_sources.stated_labels(builder), predictions))
            test_split = union.split({part: builder}, "test")
            ood[name]["per_source"][part] = unlike.score(
                out_of_distribution.split_features(
                    features_of,
                    test_split,
                    batch_size=batch_size,
                    image_size=restored.config.image_size,
                    worker_count=config.worker_count,
                    task=task,
                )
            )
            if part not in probe:
                probe[part] = probe_films(
                    test_split, task, restored.config.image_size, config.external.probe_films, batch_size
                )
            run_features[name][part] = features_of_films(features_of, probe[part][0], batch_size)
    shortcut = {}
    if len(probe) > 1:
        films = np.concatenate([f[..., 0] for f, _ in probe.values()])
        factor = max(films.shape[1] // PIXEL_PROBE_SIZE, 1)
        shortcut["raw pixels (block means)"] = _probe(separability.block_mean(films, factor), probe, config)
        for name, features in run_features.items():
            stacked = np.concatenate([features[part] for part in probe])
            shortcut[f"{name}'s penultimate features"] = _probe(stacked, probe, config)
    report = cross_dataset.cross_dataset_report(
        runs,
        tests,
        labels=list(config.external.labels) or None,
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
        shortcut=shortcut,
        ood=ood,
    )
    if jax.process_index() == 0:
        _write(workdir / EXTERNAL_DIR, report)
    return report


def _write(final: Path, report: dict) -> None:
    """The report's folder written as a draft beside ``final`` and swapped in whole (``folders``): a
    stopped run leaves the previous report, never half of a new one."""
    draft = folders.draft_of(final)
    draft.mkdir(parents=True)
    try:
        render.write_external_report(draft, report)
        folders.swap_in(draft, final)
    finally:
        if draft.exists():
            shutil.rmtree(draft)
