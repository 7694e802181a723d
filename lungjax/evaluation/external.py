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
from lungjax.evaluation import evaluate, external_sources
from lungjax.evaluation.fit import validation as validation_fit
from lungjax.evaluation.render import cross_dataset as render
from lungjax.evaluation.sections import cross_dataset
from lungjax.evaluation.stats import separability
from lungjax.runtime import run_info, sharding
from lungjax.runtime import workdir as workdir_lib

EXTERNAL_DIR = "external"
PIXEL_PROBE_SIZE = 16  # the pixel probe reads films block-averaged to 16 x 16


def probe_films(builder, task, image_size: int, count: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(films (n, S, S) uint8, patient ids (n,)): the first ``count`` films of a source's test split as a
    model sees them, for the shortcut probes."""
    films, patients = [], []
    for batch in pipeline.eval_batches(
        union.split({"probe": builder}, "test"), batch_size=batch_size, image_size=image_size, task=task
    ):
        real = batch["mask"]
        films.append(batch["image"][real, ..., 0])
        patients.append(batch["patient_id"][real].astype(str))
        if sum(len(f) for f in films) >= count:
            break
    return np.concatenate(films)[:count], np.concatenate(patients)[:count]


def external_report(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Scores every run of ``config.external.runs`` on every test source of ``config.external.tests`` and
    writes ``<workdir>/external/report.{html,json,md}``; returns the report."""
    if not config.external.runs or not config.external.tests:
        raise external_sources.ExternalError(
            "--mode external needs config.external.runs (trained workdirs) and config.external.tests "
            "((source, manual_dir) pairs)"
        )
    workdir = Path(workdir)
    workdir_lib.check_output(workdir / EXTERNAL_DIR)
    mesh = sharding.make_mesh()
    runs, tests, probe = [], [], {}
    for run_dir in config.external.runs:
        restored, builders, predict = evaluate.predictor(
            config, Path(run_dir), mesh, config.eval.checkpoint, own_run=False
        )
        if not restored.task.masked:
            raise external_sources.ExternalError(
                f"{run_dir} trains data.task={restored.task.name!r}; an external matrix scores labels by name, "
                "so its runs train a label set (config.data.labels)"
            )
        name = external_sources.run_name(run_dir)
        if any(run.name == name for run in runs):
            raise external_sources.ExternalError(f"two runs named {name!r} (the workdirs' folder names): rename one")
        fitted_for = validation_fit.FittedFor(
            restored.step, restored.params_sha256, run_info.datasets_fingerprint(builders)
        )
        fit = validation_fit.fit_on_validation(config, predict("validation"), restored.task, fitted_for)
        runs.append(
            cross_dataset.Run(
                name, external_sources.trained_on(restored.config), restored.task.class_names, predict("test"), fit
            )
        )
        for source, manual_dir in config.external.tests:
            builder = external_sources.build(restored.config.data, source, manual_dir, workdir)
            part = union.part_name(source, manual_dir)
            logging.info("external: %s on %s", name, part)
            predictions = predict("test", {part: builder})
            tests.append(cross_dataset.TestSet(name, part, external_sources.stated_labels(builder), predictions))
            if part not in probe:
                probe[part] = probe_films(
                    builder,
                    restored.task,
                    restored.config.image_size,
                    config.external.probe_films,
                    config.eval.batch_size,
                )
    shortcut = {}
    if len(probe) > 1:
        films = np.concatenate([f for f, _ in probe.values()])
        factor = max(films.shape[1] // PIXEL_PROBE_SIZE, 1)
        shortcut["raw pixels (block means)"] = separability.shortcut_probe(
            separability.block_mean(films, factor),
            np.concatenate([[part] * len(f) for part, (f, _) in probe.items()]),
            np.concatenate([p for _, p in probe.values()]),
            n_bootstrap=config.eval.n_bootstrap,
            seed=config.seed,
        )
    report = cross_dataset.cross_dataset_report(
        runs,
        tests,
        labels=list(config.external.labels) or None,
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
        shortcut=shortcut,
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
