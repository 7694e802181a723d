"""Every built source end to end on pixels: a union of CheXpert, MIMIC-CXR-JPG, PadChest and VinDr-CXR,
each a phantom tree in its real format (JPEGs, 16-bit PNGs, DICOMs), builds, trains, evaluates and
predicts; every part's test films are scored and its labels read from its own files."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import load_config, split_examples

from lungjax.data import dataset, records, union

SOURCES = ("chexpert", "mimic", "padchest", "vindr")
LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")


@pytest.fixture(scope="module")
def four_source_run(tmp_path_factory):
    from lungjax.training import loop as train

    root = tmp_path_factory.mktemp("four_sources")
    config = load_config("tiny")
    config.data.source = "chexpert"
    config.data.sources = tuple((source, 1.0, "phantom") for source in SOURCES)
    config.data.phantom_patients, config.data.labels = 30, LABELS
    config.eval.n_bootstrap, config.eval.explain_examples = 10, 2
    report = train.train_and_evaluate(config, root / "run")
    return config, root / "run", report


@pytest.mark.slow
def test_every_source_builds_trains_evaluates_and_predicts(four_source_run, capsys):
    from lungjax.evaluation import predict

    config, workdir, report = four_source_run
    names = [f"{source}-phantom" for source in SOURCES]
    assert report["task"]["sources"] == names and report["task"]["class_names"] == list(LABELS)
    rows = pd.read_csv(workdir / "eval" / "test" / "predictions.csv", keep_default_na=False, dtype=str)
    builders = union.open_built(config.data, workdir)
    expected = [
        (name, example["image_name"].decode())
        for name, builder in builders.items()
        for example in split_examples(builder, "test")
    ]
    assert list(zip(rows["patient_id"].str.split("/").str[0], rows["image_name"], strict=True)) == expected
    assert set(report["subgroups"]["attributes"]["source"]) == set(names)  # each part a cell of the audit
    films = []
    for part in union.parts(config.data):
        tree = dataset.manual_dir(union.source_config(config.data, part, workdir), workdir)
        first = records.data_source(builders[part.name], "test")[0]
        films.append(str(tree / first["image_name"].decode()))
    assert {film.rsplit(".", 1)[1] for film in films} == {"jpg", "png", "dicom"}  # each source's own format
    assert predict.predict_files(config, workdir, films) == 0
    out = capsys.readouterr().out
    assert all(film.rsplit("/", 1)[1] in out for film in films)
