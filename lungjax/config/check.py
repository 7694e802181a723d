"""Config validation before any work: one message naming each bad key and what it allows.

``lungjax.config.base.base_config()`` is the schema: its keys are the only keys and its values' types
the only types (a float key also takes an int). On top of that, ``RULES`` names the allowed values
of every key whose type alone does not say them, and ``validate`` adds the checks that depend on
the machine (the batch must split over the devices).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, NamedTuple

import jax

from lungjax import trees
from lungjax.config import base
from lungjax.config.base import base_config
from lungjax.data import (
    augment,
    dataset,
    images,
    labels,
    metadata,
    nih,
    phantom,
    sampling,
    source_builder,
    tasks,
    union,
)
from lungjax.data.sources import contract, labelspace, mimic, vindr
from lungjax.evaluation import inference
from lungjax.evaluation.fit import operating_points
from lungjax.models import MODEL_NAMES, resnet
from lungjax.runtime import checkpoint


class ConfigError(ValueError):
    """The config cannot run; the message names every bad key and its allowed values."""


class Rule(NamedTuple):
    accepts: Callable[[Any], bool]
    allowed: str


def one_of(values) -> Rule:
    values = tuple(values)
    return Rule(lambda v: v in values, "one of " + ", ".join(repr(v) for v in values))


def at_least(low: float, *, integer: bool = True) -> Rule:
    return Rule(lambda v: v >= low, f"{'an integer' if integer else 'a number'} >= {low}")


def interval(low: float, high: float, *, closed_high: bool = False, open_low: bool = False) -> Rule:
    def accepts(v):
        return (v > low if open_low else v >= low) and (v <= high if closed_high else v < high)

    return Rule(accepts, f"a number in {'(' if open_low else '['}{low}, {high}{']' if closed_high else ')'}")


def _class_weights_ok(value) -> bool:
    if isinstance(value, str):
        return value in ("balanced", "none")
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in value)
    )


def _sources_ok(value) -> bool:
    """``data.sources``: (source, weight) or (source, weight, manual_dir) entries, each a known source,
    with weights a mix can draw (the parts' names and folders are :func:`_parts_problems`')."""
    if not isinstance(value, (list, tuple)):
        return False
    if not all(
        isinstance(entry, (list, tuple))
        and len(entry) in (2, 3)
        and entry[0] in dataset.SOURCES
        and isinstance(entry[1], (int, float))
        and not isinstance(entry[1], bool)
        and (len(entry) == 2 or (isinstance(entry[2], str) and entry[2]))
        for entry in value
    ):
        return False
    if not value:
        return True
    try:
        sampling.period_counts([entry[1] for entry in value])
    except ValueError:
        return False
    return True


def _test_source_problems(values: dict) -> list[str]:
    """Another source to evaluate on (``eval.source``, ``external.tests``) is read from a folder or a
    phantom tree of a known site; a paired comparison is of one source's images."""
    tests = [("config.eval.manual_dir", values["eval.manual_dir"])] if values["eval.source"] else []
    tests += [(f"config.external.tests ({source!r})", folder) for source, folder in values["external.tests"]]
    found = []
    for key, folder in tests:
        if not folder:
            found.append(f"{key}: '' is not allowed; allowed: the source's folder, or 'phantom' / 'phantom:<site>'")
        elif dataset.is_phantom_tree(folder) and dataset.phantom_tree_site(folder) not in (None, *phantom.SITES):
            sites = ", ".join(phantom.SITES)
            found.append(f"{key}: {folder!r} is not allowed; allowed: 'phantom' or 'phantom:<site>', a site of {sites}")
    names = [union.part_name(source, folder) for source, folder in values["external.tests"]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        found.append(
            f"config.external.tests: the test sources {', '.join(map(repr, repeated))} are named more than once "
            "(a source and its folder's name); allowed: distinct test sources"
        )
    if values["eval.source"] and values["eval.compare_to"]:
        found.append(
            f"config.eval.compare_to: {values['eval.compare_to']!r} is not allowed with eval.source; allowed: '' "
            "(a paired comparison is made on a run's own test split)"
        )
    return found


def _parts_problems(values: dict, *, reads_data: bool) -> list[str]:
    """The parts a config reads (``data.sources``' entries, or ``data.source``) and their folders
    (``data.manual_dir``, or an entry's own): distinct part names, known phantom sites, phantom trees
    for the built sources only, and a folder for every part but NIH's phantom when ``reads_data``."""
    default = values["data.manual_dir"]
    union_parts = [(entry[0], entry[2] if len(entry) == 3 else None) for entry in values["data.sources"]]
    parts = union_parts or [(values["data.source"], None)]
    names = [union.part_name(source, own) for source, own in parts]
    found = []
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        found.append(
            f"config.data.sources: the part names {', '.join(map(repr, repeated))} are given more than once; "
            "allowed: distinct parts (a third element, the part's own manual_dir, tells two parts of one source apart)"
        )
    sites = ", ".join(phantom.SITES)
    unknown_site = "is not allowed; allowed: 'phantom' or 'phantom:<site>', a site of " + sites
    missing = []
    for (source, own), name in zip(parts, names, strict=True):
        folder, key = (
            (default, "config.data.manual_dir") if own is None else (own, f"config.data.sources (part {name!r})")
        )
        if source == "phantom":
            if own is not None:
                found.append(f"{key}: {own!r} is not allowed; allowed: none (NIH's phantom is made, not read)")
        elif not folder:
            missing.append((source, name))
        elif not dataset.is_phantom_tree(folder):
            continue
        elif source == "nih":
            found.append(
                f"{key}: {folder!r} is not allowed with source 'nih'; allowed: the folder of your download "
                f"(phantom trees are made for {', '.join(dataset.BUILT_SOURCES)}; NIH's is data.source='phantom')"
            )
        elif dataset.phantom_tree_site(folder) not in (None, *phantom.SITES):
            found.append(f"{key}: {folder!r} {unknown_site}")
    read_by_none = all(own is not None or source == "phantom" for source, own in parts)
    if (
        read_by_none
        and dataset.is_phantom_tree(default)
        and dataset.phantom_tree_site(default) not in (None, *phantom.SITES)
    ):
        found.append(f"config.data.manual_dir: {default!r} {unknown_site}")
    if reads_data and missing:
        sources = {source for source, _ in missing}
        with_what = (
            f"data.sources parts {', '.join(repr(name) for _, name in missing)}"
            if union_parts
            else f"data.source={missing[0][0]!r}"
        )
        own = "; or a part's own, the third element of its entry (source, weight, manual_dir)" if union_parts else ""
        trees = f"; a built source also takes 'phantom' or 'phantom:<site>' (a site of {sites}): a phantom tree"
        found.append(
            f"config.data.manual_dir: '' is not allowed with {with_what}; allowed: the folder of your download{own}"
            f"{trees if sources & set(dataset.BUILT_SOURCES) else ''}"
        )
    return list(dict.fromkeys(found))


def _operating_points_ok(value) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    try:
        operating_points.parse_all(value)
    except ValueError:
        return False
    return True


def _eval_checkpoint_ok(value) -> bool:
    if isinstance(value, bool):
        return False
    return (
        value in checkpoint.CHECKPOINT_CHOICES
        or (isinstance(value, int) and value >= 0)
        or (isinstance(value, str) and value.isdigit())
    )


def _build_options_problems(values: dict) -> list[str]:
    """A source refuses build options it does not take; NIH and the phantom take none. A union's parts
    are built with the one ``data.build_options``, so each part's source must take them."""
    sources = list(dict.fromkeys([entry[0] for entry in values["data.sources"]] or [values["data.source"]]))
    options = {key.rsplit(".", 1)[1]: v for key, v in values.items() if key.startswith("data.build_options.")}
    defaults = base_config().data.build_options.to_dict()
    changed = sorted(key for key, value in options.items() if value != defaults[key])
    found = []
    for source in sources:
        if source in dataset.BUILT_SOURCES:
            try:
                source_builder.make_config(source, images.MIN_SIZE, **options)  # the size has its own rule
            except contract.SourceError as err:
                found.append(f"config.data.build_options: {err}")
        elif changed:
            found.append(
                f"config.data.build_options: {changed} are not allowed with data.source={source!r}; allowed: the "
                "defaults (the options are the built sources')"
            )
    return found


def _labels_ok(value) -> bool:
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        return False
    try:
        return not value or bool(tasks.label_set(value))
    except contract.SourceError:
        return False


# A training run's uncertainty policies: labelspace's, less 'refuse' (a check of a table at build time).
UNCERTAINTY_POLICIES = (*(p for p in labelspace.POLICIES if p != "refuse"), *labelspace.NAMED_POLICIES)
POSITIVE = Rule(lambda v: v > 0, "a number > 0")
RULES = MappingProxyType(
    {
        "data.source": one_of(dataset.SOURCES),
        "data.sources": Rule(
            _sources_ok,
            f"a tuple of (source, weight) or (source, weight, manual_dir) entries, each source one of "
            f"{', '.join(map(repr, dataset.SOURCES))}, each weight a number > 0 and at least 1/{sampling.MAX_PERIOD} "
            "of the weights' sum, each manual_dir a non-empty string",
        ),
        "data.task": one_of(tasks.TASKS),
        "data.labels": Rule(
            _labels_ok,
            f"() (the classes of data.task), one named set ({', '.join(labelspace.named_sets())}) or distinct "
            f"names of the harmonised vocabulary ({', '.join(labelspace.vocabulary())})",
        ),
        "data.uncertainty": one_of(UNCERTAINTY_POLICIES),
        "data.views": one_of(metadata.VIEWS),
        "data.split_scheme": one_of(nih.SPLIT_SCHEMES),
        "data.stored_size": Rule(
            lambda v: images.MIN_SIZE <= v <= images.MAX_SIZE,
            f"an integer in {images.MIN_SIZE}..{images.MAX_SIZE}",
        ),
        "data.phantom_patients": at_least(labels.NUM_CLASSES),
        "data.build_workers": at_least(0),
        "data.build_options.labeller": one_of(mimic.LABELLERS),
        "data.build_options.readers": one_of(vindr.POLICIES),
        "image_size": at_least(images.MIN_SIZE),
        "augment": one_of(augment.AUGMENTATIONS),
        "seed": at_least(0),
        "data.phantom_seed": at_least(0),
        "worker_count": at_least(0),
        "model.name": one_of(MODEL_NAMES),
        "model.width": POSITIVE,
        "model.dropout_rate": interval(0, 1),
        "batch_size": at_least(1),
        "num_epochs": at_least(0),
        "optimizer": one_of(base.OPTIMIZERS),
        "learning_rate": POSITIVE,
        "schedule": one_of(base.SCHEDULES),
        "warmup_epochs": at_least(0, integer=False),
        "plateau.factor": interval(0, 1, open_low=True, closed_high=True),
        "plateau.patience": at_least(0),
        "plateau.cooldown": at_least(0),
        "plateau.min_scale": interval(0, 1, open_low=True, closed_high=True),
        "weight_decay": at_least(0, integer=False),
        "grad_clip_norm": at_least(0, integer=False),
        "class_weights": Rule(
            _class_weights_ok, "'balanced', 'none' or a list of positive numbers, one per class of data.task"
        ),
        "label_smoothing": interval(0, 1),
        "focal_gamma": at_least(0, integer=False),
        "ema_decay": interval(0, 1),
        "checkpoint_every_steps": at_least(1),
        "keep_checkpoints": at_least(1),
        "log_every_steps": at_least(1),
        "eval_every_steps": at_least(0),
        "early_stop_patience": at_least(0),
        "eval.checkpoint": Rule(_eval_checkpoint_ok, f"one of {checkpoint.CHECKPOINT_CHOICES} or a step number"),
        "eval.split": one_of(inference.EVAL_SPLITS),
        "eval.batch_size": at_least(1),
        "eval.n_bootstrap": at_least(0),
        "eval.tta_crops": Rule(
            lambda v: 1 <= v <= inference.MAX_TTA_CROPS, f"an integer in 1..{inference.MAX_TTA_CROPS}"
        ),
        "eval.explain_examples": at_least(0),
        "eval.cam_stage": Rule(lambda v: 1 <= v <= resnet.NUM_STAGES, f"an integer in 1..{resnet.NUM_STAGES}"),
        "eval.operating_points": Rule(
            _operating_points_ok,
            f"a non-empty tuple of distinct rules, each '{operating_points.YOUDEN}' or '<metric>>=<value>' with "
            f"metric one of {', '.join(operating_points.METRICS)} and 0 < value <= 1",
        ),
        "eval.compare_checkpoint": Rule(
            _eval_checkpoint_ok, f"one of {checkpoint.CHECKPOINT_CHOICES} or a step number"
        ),
        "eval.source": one_of(("", *dataset.BUILT_SOURCES)),
        "external.runs": Rule(
            lambda v: isinstance(v, (list, tuple)) and all(isinstance(w, str) and w for w in v),
            "a tuple of trained runs' workdirs",
        ),
        "external.tests": Rule(
            lambda v: (
                isinstance(v, (list, tuple))
                and all(
                    isinstance(t, (list, tuple))
                    and len(t) == 2
                    and t[0] in dataset.BUILT_SOURCES
                    and isinstance(t[1], str)
                    for t in v
                )
            ),
            f"a tuple of (source, manual_dir) pairs, each source one of {', '.join(map(repr, dataset.BUILT_SOURCES))}",
        ),
        "external.labels": Rule(_labels_ok, "() (every shared label) or distinct names of the harmonised vocabulary"),
        "external.probe_films": at_least(2),
    }
)
# Keys whose type may differ from the base config's value.
FREE_TYPES = frozenset(
    {
        "class_weights",
        "data.labels",
        "data.sources",
        "eval.checkpoint",
        "eval.compare_checkpoint",
        "eval.operating_points",
        "external.runs",
        "external.tests",
        "external.labels",
    }
)


def _siblings(key: str, schema: dict) -> str:
    """The keys beside ``key``: its section's keys, or the top-level keys and sections."""
    section = key.rpartition(".")[0]
    names = {k for k in schema if k.rpartition(".")[0] == section}
    if not section:
        names |= {f"{k.split('.')[0]}.*" for k in schema if "." in k}
    return ", ".join(sorted(names))


def unknown_key_problem(key: str, schema: dict | None = None) -> str:
    schema = trees.flatten(base_config()) if schema is None else schema
    section = key.rpartition(".")[0]
    where = f"config.{section}" if section else "config"
    return f"config.{key} is not a config key; allowed keys in {where}: {_siblings(key, schema)}"


def _type_problem(key: str, value, expected) -> str | None:
    if key in FREE_TYPES:
        return None
    kind = type(expected)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if ok and kind is float and not math.isfinite(value):
        return f"config.{key}: {value!r} is not allowed; allowed: a finite number"
    if not ok:
        return f"config.{key}: {value!r} has type {type(value).__name__}; allowed: a value of type {kind.__name__}"
    return None


def _label_problems(values: dict) -> list[str]:
    """A source's build stores label states, which only a label set reads; a label set reads NIH's builds
    of the 14 findings, not the six-class one (``task_labels.TaskLabels``)."""
    names = [name for name, *_ in values["data.sources"]] or [values["data.source"]]
    built = [name for name in names if name in dataset.BUILT_SOURCES]
    found = []
    if built and not values["data.labels"]:
        found.append(
            f"config.data.labels: () is not allowed with data.source={built[0]!r}; allowed: a label set of the "
            f"harmonised vocabulary, a named set ({', '.join(labelspace.named_sets())}) or names (a source states "
            "its own labels, so a run names the ones it trains)"
        )
    if built and len(built) < len(names):
        nih_format = [name for name in names if name not in dataset.BUILT_SOURCES]
        found.append(
            f"config.data.sources: {nih_format[0]!r} and {built[0]!r} are not allowed in one union; allowed: "
            "sources of one kind (NIH's format, phantom or nih; or the sources' builds), whose records store the "
            "same labels"
        )
    elif values["data.labels"] and len(built) < len(names) and values["data.task"] != tasks.FULL14.name:
        found.append(
            f"config.data.task: {values['data.task']!r} is not allowed with data.labels and an NIH-format source; "
            f"allowed: {tasks.FULL14.name!r} (a label set reads NIH's 14 findings)"
        )
    return found


def problems(config, *, reads_data: bool = True, trains: bool = True) -> list[str]:
    """Every problem with ``config`` (a ConfigDict or dict), one line each; empty when it is fine.

    ``reads_data=False`` for the modes that take the data section from the checkpoint's saved config
    (evaluate, predict): the config's own download folder is then not needed. ``trains=False`` for
    ``--mode prepare``, which builds a source whatever label set a later run trains.
    """
    schema = trees.flatten(base_config())
    values = trees.flatten(config)
    found = [unknown_key_problem(key, schema) for key in values if key not in schema]
    found += [f"config.{key} is missing" for key in schema if key not in values]
    for key, value in values.items():
        if key not in schema:
            continue
        problem = _type_problem(key, value, schema[key])
        if problem is None and key in RULES and not RULES[key].accepts(value):
            problem = f"config.{key}: {value!r} is not allowed; allowed: {RULES[key].allowed}"
        if problem:
            found.append(problem)
    if found:
        return found
    if values["image_size"] > values["data.stored_size"]:
        found.append(
            f"config.image_size: {values['image_size']} is larger than data.stored_size "
            f"{values['data.stored_size']}; allowed: at most the stored size (more pixels than are stored "
            "would only be interpolated, and cost memory)"
        )
    task = tasks.label_set(values["data.labels"]) if values["data.labels"] else tasks.get(values["data.task"])
    weights = values["class_weights"]
    if isinstance(weights, (list, tuple)) and len(weights) != task.num_classes:
        found.append(
            f"config.class_weights: {len(weights)} numbers for the {task.num_classes} classes of data.task="
            f"{task.name!r}; allowed: one per class ({', '.join(task.class_names)})"
        )
    if task.multi_label and values["data.split_scheme"] == "seed":
        found.append(
            f"config.data.split_scheme: 'seed' is not allowed with data.task={task.name!r}; allowed: 'patient' "
            "(NIH's official lists when they are in manual_dir, else a patient-disjoint split)"
        )
    if not task.multi_label and values["data.views"] != "both":
        found.append(
            f"config.data.views: {values['data.views']!r} is not allowed with data.task={task.name!r}; allowed: 'both'"
        )
    if values["model.stem_space_to_depth"] and values["model.stem_pad_channels"]:
        found.append(
            "config.model.stem_pad_channels: True is not allowed with model.stem_space_to_depth=True; "
            "allowed: one of the two stem rewrites at most"
        )
    if values["model.strided_space_to_depth"] and values["model.name"] not in resnet.MODEL_NAMES:
        found.append(
            f"config.model.strided_space_to_depth: True is not allowed with model.name={values['model.name']!r}; "
            "allowed: False (it has no stride-2 convolution after its stem; it downsamples by pooling)"
        )
    if trains:
        found.extend(_label_problems(values))
    found.extend(_parts_problems(values, reads_data=reads_data))
    found.extend(_test_source_problems(values))
    found.extend(_build_options_problems(values))
    if values["num_train_steps"] <= 0 and values["num_epochs"] <= 0:
        found.append(
            f"config.num_train_steps: {values['num_train_steps']} with num_epochs "
            f"{values['num_epochs']} trains nothing; allowed: num_train_steps > 0 or num_epochs > 0"
        )
    devices, processes = jax.device_count(), jax.process_count()
    for key in ("batch_size", "eval.batch_size"):
        if values[key] % devices or values[key] % processes:
            found.append(
                f"config.{key}: {values[key]} does not split over the {devices} devices of "
                f"{processes} processes; allowed: a multiple of {math.lcm(devices, processes)}"
            )
    return found


def validate(config, *, reads_data: bool = True, trains: bool = True) -> None:
    """Raises one ``ConfigError`` listing every problem, or returns when the config can run."""
    found = problems(config, reads_data=reads_data, trains=trains)
    if found:
        raise ConfigError("invalid config: " + "; ".join(found))


def check_override_flags(argv: list[str]) -> None:
    """Refuses ``--config.<key>=...`` command-line overrides of keys the config does not have.

    ml_collections raises an AttributeError with a traceback for those; this names the key and the
    keys allowed beside it instead.
    """
    schema = trees.flatten(base_config())
    sections = {key.rsplit(".", 1)[0] for key in schema if "." in key}
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in schema and key not in sections:
                raise ConfigError(f"invalid config: {unknown_key_problem(key, schema)}")
