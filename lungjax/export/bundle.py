"""Writes ``<workdir>/export/<step>/``: the checkpoint ``config.eval.checkpoint`` names, as a deployable bundle.

The thresholds and temperatures are the evaluation's own: the ``validation_fit.json`` that an
evaluation of the same step without test-time crops wrote (the exported function has none), or,
when there is none, ``validation.fit_on_validation`` on this checkpoint's validation predictions, so
that either way the numbers come from one piece of code. Everything is written into a folder of
this process's own and renamed into place only after the parity check passed: a failed export
leaves no bundle behind, and a bundle is never one checkpoint's model beside another's manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lungjax import models
from lungjax.data import records
from lungjax.evaluation import evaluate, inference
from lungjax.evaluation.fit import validation
from lungjax.export import manifest, parity, serialize
from lungjax.runtime import run_info, sharding
from lungjax.runtime import workdir as workdir_lib
from lungjax.serve.bundle_format import CONFIG_FILE, MANIFEST_FILE, MODEL_FILES, PARITY_FILE

EXPORT_DIR = "export"
PARITY_SPLIT = "validation"


class ExportError(Exception):
    """An export that cannot be made or failed its parity check; the message says which and why."""


def export(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, parity_images: int) -> Path:
    """Exports ``config.eval.checkpoint`` of ``workdir``, checking parity on at most ``parity_images``
    validation images; returns the bundle's folder."""
    if jax.process_count() > 1:
        raise ExportError("--mode export runs in one process: start it without --num_processes")
    if parity_images < 1:
        raise ExportError(f"the parity check needs at least one validation image, got parity_images={parity_images}")
    workdir = Path(workdir)
    workdir_lib.check_output(workdir / EXPORT_DIR)  # before any work: export/ is a folder or absent
    config = _without_crops(config)
    mesh = sharding.make_mesh()
    restored, builder, predict = evaluate.predictor(config, workdir, mesh, config.eval.checkpoint)
    workdir_lib.check_output(workdir / EXPORT_DIR / str(restored.step))
    fit, fit_source = _validation_fit(config, workdir, restored, predict)
    saved, task = restored.config, restored.task
    pairs = _exported_and_reference(restored, mesh)
    batches = inference.split_batches(
        records.data_source(builder, PARITY_SPLIT),
        global_batch_size=config.eval.batch_size,
        image_size=saved.image_size,
        worker_count=config.worker_count,
    )
    measured = parity.measure(pairs, batches, parity_images)
    _check(measured)
    config_json = json.dumps(saved.to_dict(), indent=2, sort_keys=True).encode()
    model_files = {
        precision: {
            "file": MODEL_FILES[precision],
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "compute_dtype": precision,
            "platforms": list(serialize.PLATFORMS),
        }
        for precision, (data, _) in pairs.items()
    }
    record = manifest.build(
        task=task,
        saved_config=saved,
        fit=fit,
        fit_source=fit_source,
        fitted_dtype="bfloat16" if saved.half_precision else "float32",
        model_files=model_files,
        config_sha256=hashlib.sha256(config_json).hexdigest(),
        dataset_name=builder.builder_config.name,
        dataset_fingerprint=run_info.dataset_fingerprint(builder),
        step=restored.step,
    )
    parity_record = {
        "split": PARITY_SPLIT,
        "reference": "lungjax.evaluation.inference.make_predict_fn (tta_crops=1) on the restored checkpoint",
        "models": {MODEL_FILES[precision]: result for precision, result in measured.items()},
    }
    files = {
        **{MODEL_FILES[precision]: data for precision, (data, _) in pairs.items()},
        CONFIG_FILE: config_json,
        PARITY_FILE: json.dumps(parity_record, indent=2).encode(),
        MANIFEST_FILE: json.dumps(record, indent=2).encode(),
    }
    return _write(workdir / EXPORT_DIR / str(restored.step), files)


def _validation_fit(config, workdir: Path, restored, predict) -> tuple[dict, str]:
    """The evaluation's record for this step without crops, or the same fit made now; and which it is."""
    fit = validation.load_validation_fit(workdir, restored.step, 1)
    if fit is not None:
        return fit, "validation_fit.json of an evaluation of this checkpoint without test-time crops"
    fit = validation.fit_on_validation(config, predict("validation"), restored.task, restored.step)
    return fit, "validation.fit_on_validation at export (no evaluation of this checkpoint without crops was found)"


def _exported_and_reference(restored, mesh) -> dict[str, tuple[bytes, object]]:
    """``{precision: (model file bytes, in-process images -> probabilities)}``: float32 always, bfloat16
    too when the checkpoint trained in it."""
    saved, task = restored.config, restored.task
    graphdefs = {"float32": _graphdef(saved, task, half_precision=False)}
    if saved.half_precision:
        graphdefs["bfloat16"] = restored.graphdef
    pairs = {}
    for precision, graphdef in graphdefs.items():
        dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
        fn = serialize.inference_function(graphdef, restored.model_state, dtype, multi_label=task.multi_label)
        reference = inference.make_predict_fn(graphdef, mesh, dtype, tta_crops=1, multi_label=task.multi_label)
        pairs[precision] = (
            serialize.serialize(fn, saved.image_size),
            lambda images, reference=reference: reference(restored.model_state, images),
        )
    return pairs


def _without_crops(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with ``eval.tta_crops = 1``: the exported function scores the whole image once."""
    copy = config.copy_and_resolve_references()
    copy.eval.tta_crops = 1
    return copy


def _graphdef(saved: ml_collections.ConfigDict, task, *, half_precision: bool) -> nnx.GraphDef:
    """The structure of the checkpoint's model in a given compute dtype (no weights are made)."""
    abstract = nnx.eval_shape(
        lambda: models.from_config(saved.model, num_classes=task.num_classes, half_precision=half_precision)
    )
    return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


def _check(measured: dict[str, dict]) -> None:
    if not next(iter(measured.values()))["images"]:
        raise ExportError(f"the {PARITY_SPLIT} split has no images to check the exported model on: nothing was written")
    for precision, result in measured.items():
        if not result["within"]:
            raise ExportError(
                f"the exported {precision} model differs from the in-process one by {result['max_abs_difference']:.3g} "
                f"in probability on {result['images']} {PARITY_SPLIT} images (bound {result['bound']:g}): "
                "nothing was written"
            )


def _write(final: Path, files: dict[str, bytes]) -> Path:
    """Writes ``files`` into a draft folder beside ``final``, then swaps it in whole (``workdir.writing``:
    under ``export/lock.json``, after deleting the drafts that stopped exports left)."""
    with workdir_lib.writing(final, is_output=str.isdigit) as draft:
        for name, data in files.items():
            (draft / name).write_bytes(data)
    return final
