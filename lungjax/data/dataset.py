"""From a config's ``data`` section to a built TFDS dataset, making the phantom tree when asked.

``source="phantom"`` writes the embedded phantom as an NIH-format tree under the data directory
(once) and builds it with the same builder that reads a real NIH download (``source="nih"``).
Any other source (``chexpert``, ``mimic``, ``padchest``, ``vindr``, ``hospital``) is the download in
``manual_dir``, built by :mod:`lungjax.data.source_builder` with the options of ``data.build_options``;
``manual_dir="phantom"`` or ``"phantom:<site>"`` (a preset of :data:`lungjax.data.phantom.SITES`) makes
that download a phantom tree in the source's own format, written once under the data directory.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from absl import logging

from lungjax.data import building, nih, phantom, source_builder, tasks
from lungjax.data.phantom import source_trees

# NIH is built by its own builder (six-class and full14); the other sources by the sources' builder.
BUILT_SOURCES = tuple(name for name in source_builder.SOURCES if name != "nih")
SOURCES = ("phantom", "nih", *BUILT_SOURCES)
PHANTOM_DIR = "phantom_nih_tree"
PHANTOM_TREE = "phantom"  # data.manual_dir of a built source: its phantom tree; "phantom:<site>" at a site
# Build options that a source's phantom writer takes too, so that the tree holds what the build reads
# (MIMIC's labeller: the tree writes that labeller's file).
PHANTOM_TREE_OPTIONS = {"mimic": ("labeller",)}


def data_dir(data_config, workdir: str | os.PathLike) -> Path:
    return Path(data_config.data_dir or Path(workdir) / "tfds").absolute()


def is_phantom_tree(manual_dir: str) -> bool:
    """Whether a ``data.manual_dir`` asks for a phantom tree (``phantom`` or ``phantom:<site>``)."""
    return manual_dir == PHANTOM_TREE or manual_dir.startswith(f"{PHANTOM_TREE}:")


def phantom_tree_site(manual_dir: str) -> str | None:
    """The site of a ``phantom:<site>`` manual_dir; None for ``phantom`` (no site effect)."""
    return manual_dir.partition(":")[2] if ":" in manual_dir else None


def manual_dir(data_config, workdir: str | os.PathLike) -> Path:
    """Where the source's files are: the user's download, or the phantom tree made for this config
    (written by :func:`build`)."""
    if data_config.source == "phantom":
        name = f"{PHANTOM_DIR}_{data_config.phantom_patients}_{data_config.phantom_seed}_{data_config.stored_size}"
        task = data_config.get("task", tasks.SIX_CLASS.name)
        return data_dir(data_config, workdir) / (name if task == tasks.SIX_CLASS.name else f"{name}_{task}")
    if not data_config.manual_dir:
        raise ValueError(f"config.data.manual_dir must name your download when data.source={data_config.source!r}")
    if data_config.source in BUILT_SOURCES and is_phantom_tree(data_config.manual_dir):
        return source_trees.read_folder(data_config.source, _source_tree_root(data_config, workdir))
    return Path(data_config.manual_dir).absolute()


def _source_tree_root(data_config, workdir: str | os.PathLike) -> Path:
    """The folder of a built source's phantom tree, named by everything that changes its bytes."""
    site = phantom_tree_site(data_config.manual_dir)
    options = [str(data_config.build_options[key]) for key in PHANTOM_TREE_OPTIONS.get(data_config.source, ())]
    name = "_".join(
        [
            f"phantom_{data_config.source}_tree",
            *([f"site{site}"] if site is not None else []),
            *options,
            str(data_config.phantom_patients),
            str(data_config.phantom_seed),
            str(data_config.stored_size),
        ]
    )
    return data_dir(data_config, workdir) / name


def _phantom_writer(data_config) -> Callable[[Path], object]:
    """The function that writes this config's phantom tree into a given folder: NIH's for
    ``source="phantom"``, else the built source's own (``source_trees.WRITERS``)."""
    common = {
        "seed": data_config.phantom_seed,
        "image_size": data_config.stored_size,
        "num_workers": max(data_config.build_workers, 1),
        "progress": True,
    }
    if data_config.source == "phantom":
        return functools.partial(
            phantom.write_nih_tree,
            num_patients=data_config.phantom_patients,
            task=data_config.get("task", tasks.SIX_CLASS.name),
            **common,
        )
    options = {key: data_config.build_options[key] for key in PHANTOM_TREE_OPTIONS.get(data_config.source, ())}
    writer, count = source_trees.WRITERS[data_config.source], data_config.phantom_patients
    site = phantom_tree_site(data_config.manual_dir)
    # The count is each writer's second argument: patients, or images for VinDr (one film per patient).
    return lambda root: writer(root, count, site=site, **options, **common)


def builder_config(data_config) -> nih.NihConfig | source_builder.SourceConfig:
    """The builder config of a config's ``data`` section (one saved before tasks existed is six-class)."""
    if data_config.source in BUILT_SOURCES:
        return source_builder.make_config(
            data_config.source, data_config.stored_size, **data_config.build_options.to_dict()
        )
    return nih.make_config(
        data_config.split_scheme,
        data_config.stored_size,
        task=data_config.get("task", tasks.SIX_CLASS.name),
        views=data_config.get("views", "both"),
    )


def build(data_config, workdir: str | os.PathLike) -> nih.NihChestXray | source_builder.LungjaxSources:
    """The built dataset for this config; generates and builds whatever is missing."""
    tree = manual_dir(data_config, workdir)
    if data_config.source in BUILT_SOURCES:
        if is_phantom_tree(data_config.manual_dir):
            root = _source_tree_root(data_config, workdir)
            if not root.is_dir():
                _write_phantom_tree(root, _phantom_writer(data_config))
        build_dataset = source_builder.build_dataset
    else:
        if data_config.source == "phantom" and not tree.is_dir():
            _write_phantom_tree(tree, _phantom_writer(data_config))
        build_dataset = nih.build_dataset
    return build_dataset(
        tree,
        data_dir(data_config, workdir),
        builder_config(data_config),
        num_workers=data_config.build_workers,
        skip_bad_images=data_config.skip_bad_images,
    )


def built(data_config, workdir: str | os.PathLike) -> nih.NihChestXray | source_builder.LungjaxSources | None:
    """The dataset for this config if it is built, else None; never builds: for a reader that only
    checks which dataset is there (``--mode predict`` compares its fingerprint with an evaluation's)."""
    builder_class = source_builder.LungjaxSources if data_config.source in BUILT_SOURCES else nih.NihChestXray
    builder = builder_class(config=builder_config(data_config), data_dir=os.fspath(data_dir(data_config, workdir)))
    return builder if builder.is_prepared() else None


def open_built(data_config, workdir: str | os.PathLike) -> nih.NihChestXray | source_builder.LungjaxSources:
    """The built dataset for this config, never building it: the dataset of another run (one compared
    with) is that run's to make, in its own workdir."""
    builder = built(data_config, workdir)
    if builder is None:
        raise building.DatasetNotBuiltError(
            f"the dataset of the run in {workdir} is not built (no {builder_config(data_config).name} in "
            f"{data_dir(data_config, workdir)}): run --mode prepare (or evaluate) with --workdir={workdir} first"
        )
    return builder


def _write_phantom_tree(tree: Path, write: Callable[[Path], object]) -> None:
    """Runs ``write`` (:func:`_phantom_writer`) into a folder of this process's own, then renames it into
    place: the tree is whole or absent, whatever stops the writer (a full disk, a kill), and two runs
    writing it at once never read each other's half-written files (the first rename wins; the other's
    copy goes)."""
    draft = tree.with_name(f".{tree.name}.{socket.gethostname()}-{os.getpid()}")
    try:
        write(draft)
        os.rename(draft, tree)
    except OSError as err:
        if not tree.is_dir():
            raise
        logging.info("another run wrote %s first (%s)", tree, err.strerror)
    finally:
        shutil.rmtree(draft, ignore_errors=True)
