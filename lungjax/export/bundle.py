"""Writes ``<workdir>/export/<step>/``: the checkpoint ``config.eval.checkpoint`` names, as a deployable bundle.

The thresholds and temperatures are the evaluation's own: the ``validation_fit.json`` that an
evaluation of this very checkpoint (its step and weights, ``validation.find``) on the dataset on disk
wrote without test-time crops (the exported function has none), when it chose the operating points
``config.eval.operating_points`` asks for. Otherwise (no such evaluation, one of other weights or
another dataset, one damaged or without the weights' digest, other operating points) the export
fits them again with ``validation.fit_on_validation`` on this checkpoint's validation predictions,
says why in one line, and records it in the manifest: either way the numbers come from one piece of
code, for this model. Refitting rather than refusing, because the export holds the checkpoint and the
validation split already, and the refit is what an evaluation would write. Everything is written into a folder of
this process's own and renamed into place only after the parity check passed: a failed export
leaves no bundle behind, and a bundle is never one checkpoint's model beside another's manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lungjax import models
from lungjax.data import union
from lungjax.evaluation import evaluate, inference, out_of_distribution
from lungjax.evaluation.fit import operating_points, validation
from lungjax.export import manifest, parity, serialize
from lungjax.runtime import run_info, sharding
from lungjax.runtime import workdir as workdir_lib
from lungjax.serve.bundle_format import CONFIG_FILE, MANIFEST_FILE, MODEL_FILES, OOD_FILE, PARITY_FILE

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
    restored, builders, predict = evaluate.predictor(config, workdir, mesh, config.eval.checkpoint)
    workdir_lib.check_output(workdir / EXPORT_DIR / str(restored.step))
    fingerprint = run_info.datasets_fingerprint(builders)
    fitted_for = validation.FittedFor(restored.step, restored.params_sha256, fingerprint)
    fit, fit_source = _validation_fit(config, workdir, fitted_for, restored.task, predict)
    saved, task = restored.config, restored.task
    pairs = _exported_and_reference(restored, mesh)
    batches = inference.split_batches(
        union.split(builders, PARITY_SPLIT),
        global_batch_size=config.eval.batch_size,
        image_size=saved.image_size,
        worker_count=config.worker_count,
        task=task,
    )
    measured = parity.measure(pairs, batches, parity_images)
    _check(measured)
    unlike = _out_of_distribution(config, builders, task, pairs["float32"][0], saved.image_size)
    unlike_npz = unlike.to_npz()
    config_json = json.dumps(saved.to_dict(), indent=2, sort_keys=True).encode()
    parity_record = {
        "split": PARITY_SPLIT,
        "reference": "lungjax.evaluation.inference.make_predict_fn (tta_crops=1) on the restored checkpoint",
        "models": {MODEL_FILES[precision]: result for precision, result in measured.items()},
    }
    parity_json = json.dumps(parity_record, indent=2).encode()
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
        parity_sha256=hashlib.sha256(parity_json).hexdigest(),
        dataset_name=union.dataset_name(builders),
        dataset_fingerprint=fingerprint,
        step=restored.step,
        params_sha256=restored.params_sha256,
        out_of_distribution_record=manifest.out_of_distribution_section(
            unlike.summary(), unlike_npz, f"{MODEL_FILES['float32']} (float32)"
        ),
    )
    files = {
        **{MODEL_FILES[precision]: data for precision, (data, _) in pairs.items()},
        CONFIG_FILE: config_json,
        PARITY_FILE: parity_json,
        OOD_FILE: unlike_npz,
        MANIFEST_FILE: json.dumps(record, indent=2).encode(),
    }
    return _write(workdir / EXPORT_DIR / str(restored.step), files)


def _validation_fit(config, workdir: Path, fitted_for, task, predict) -> tuple[dict, str]:
    """The evaluation's record for this checkpoint and dataset without crops, when it holds the operating
    points asked for; otherwise the same fit made now, with a note saying why; and which it is."""
    asked = [rule.text for rule in operating_points.parse_all(config.eval.operating_points)]
    try:
        fit, reasons = validation.find(workdir, fitted_for, task, 1)
    except validation.ValidationFitError as err:
        fit, reasons = None, [err.reason]
    if fit is not None and list(fit["operating_points"]) != asked:
        reasons.append(
            f"the evaluation chose the operating points {list(fit['operating_points'])}, "
            f"config.eval.operating_points asks for {asked}"
        )
        fit = None
    if fit is not None:
        return fit, "validation_fit.json of an evaluation of this checkpoint (step and weights) without test-time crops"
    for reason in reasons:
        print(f"note: {reason}: the export fits the thresholds and temperatures again on validation", file=sys.stderr)
    why = "; ".join(reasons) or "no evaluation of this checkpoint without test-time crops was found"
    fit = validation.fit_on_validation(config, predict("validation"), task, fitted_for)
    return fit, f"validation.fit_on_validation at export ({why})"


def _out_of_distribution(config, builders: dict, task, model_file: bytes, image_size: int):
    """The out-of-distribution score fitted on the features the exported float32 file itself gives (so
    that serve's scores are the fitted ones), on the training and validation films."""
    exported = jax.jit(jax.export.deserialize(bytearray(model_file)).call)
    return out_of_distribution.fit_on_splits(
        lambda images: exported(images)[1],
        builders,
        task=task,
        batch_size=config.eval.batch_size,
        image_size=image_size,
        worker_count=config.worker_count,
    )


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
