"""The label space (vocabulary, mappings, named sets, label matrix and policies), the contract's one
validation and the patient split, on small tables whose answers are written out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungjax.data import labels
from lungjax.data.sources import contract, labelspace, splits

P, N, U, X = contract.POSITIVE, contract.NEGATIVE, contract.UNCERTAIN, contract.NOT_STATED


def _table(states: dict[str, list[int]], **columns) -> contract.SourceTable:
    rows = len(next(iter(states.values())))
    frame = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(rows)],
            "patient_id": columns.get("patient_id", [f"p{i}" for i in range(rows)]),
            "study_id": [f"s{i}" for i in range(rows)],
            "view": columns.get("view", ["PA"] * rows),
            "sex": ["F"] * rows,
            "age": [50.0] * rows,
            "split": columns.get("split", [contract.NO_SPLIT] * rows),
            **{name: np.asarray(values, np.int8) for name, values in states.items()},
        }
    )
    return contract.SourceTable("test", frame, tuple(states), {})


def test_vocabulary_and_mappings_are_consistent():
    vocabulary = labelspace.vocabulary()
    assert all(definition.strip() for definition in vocabulary.values())
    for source in ("nih", "chexpert", "vindr", "padchest"):
        for string, names in labelspace.mapping(source).items():
            assert all(name in vocabulary for name in names), (source, string)
    assert labelspace.mapping("padchest")["pseudonodule"] == ()
    assert labelspace.mapping("padchest")["subcutaneous emphysema"] == ()
    assert labelspace.mapping("padchest")["pericardial effusion"] == ()
    assert labelspace.mapping("nih")["Nodule"] == ("Nodule", "Nodule/Mass")
    assert labelspace.mapping("chexpert")["Pleural Effusion"] == ("Effusion",)


def test_named_sets():
    sets = labelspace.named_sets()
    assert sets["nih14"] == labels.FINDINGS14
    assert sets["chexpert5"] == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")
    shared = {"Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema"}
    assert set(sets["shared7"]) == shared and len(sets["shared7"]) == 7
    with pytest.raises(contract.SourceError, match="unknown label set 'nih15'"):
        labelspace.resolve("nih15")
    with pytest.raises(contract.SourceError, match=r"labels \['Effusions'\] are not in the harmonised vocabulary"):
        labelspace.resolve(["Effusions"])


def test_harmonise_keeps_the_strongest_statement():
    states = {
        "Nodule": np.array([P, N, N, X, U], np.int8),
        "Mass": np.array([N, N, P, X, N], np.int8),
    }
    result = labelspace.harmonise("nih", states)
    assert result["Nodule/Mass"].tolist() == [P, N, P, X, U]
    assert result["Nodule"].tolist() == states["Nodule"].tolist()
    with pytest.raises(contract.SourceError, match=r"labels \['Nodules'\] are neither mapped"):
        labelspace.harmonise("nih", {"Nodules": np.array([P], np.int8)})


@pytest.mark.parametrize(
    "policy, values, mask",
    [
        ("ignore", [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]),
        ("zeros", [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]]),
        ("ones", [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]]),
        ({"Edema": "ones"}, [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]]),
        # Irvin et al.: U-Zeros for Cardiomegaly, U-Ones for Edema
        ("irvin2019", [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]]),
    ],
)
def test_label_matrix_under_each_policy(policy, values, mask):
    table = _table({"Cardiomegaly": [P, U, N, X], "Edema": [N, U, X, N]})
    got_values, got_mask = labelspace.label_matrix(table, ["Cardiomegaly", "Edema", "Hernia"], uncertainty=policy)
    assert got_values.tolist() == values and got_mask.astype(int).tolist() == mask
    assert got_values.dtype == np.float32 and got_mask.dtype == bool


def test_unknown_policies_are_refused():
    table = _table({"Edema": [P]})
    with pytest.raises(contract.SourceError, match="unknown uncertainty policy 'u-ones'"):
        labelspace.label_matrix(table, ["Edema"], uncertainty="u-ones")
    with pytest.raises(contract.SourceError, match=r"unknown uncertainty policies \{'Edema': 'half'\}"):
        labelspace.label_matrix(table, ["Edema"], uncertainty={"Edema": "half"})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(view=["PA", "frontal"]), r"column 'view' must be one of .* row 1 \(1.png\)"),
        (lambda f: f.assign(Edema=np.array([P, 3], np.int8)), "label 'Edema' must hold int8 states"),
        (lambda f: f.assign(Edema=[1, 0]), "label 'Edema' must hold int8 states"),
        (lambda f: f.assign(path=["a.png", "a.png"]), "paths listed twice"),
        (lambda f: f.assign(split=["train", ""]), "an official split must name every row"),
        (lambda f: f.assign(split=["train", "test"], patient_id=["p", "p"]), r"patient p is on two official splits"),
        (lambda f: f.drop(columns="age"), r"test table lacks the columns \['age'\]"),
    ],
)
def test_validate_refuses_what_breaks_the_contract(change, message):
    table = _table({"Edema": [P, N]})
    with pytest.raises(contract.SourceError, match=message):
        contract.validate(table.with_frame(change(table.frame)))


def test_select_views():
    table = _table({"Edema": [P, N, N]}, view=["PA", "lateral", "AP"])
    frontal = contract.select_views(table)
    assert frontal.frame["path"].tolist() == ["0.png", "2.png"]
    assert frontal.options == {"views": ("PA", "AP"), "rows_of_other_views": 1}
    with pytest.raises(contract.SourceError, match=r"views \['LL'\] are not among"):
        contract.select_views(table, ["LL"])


def test_patient_split_is_seeded_and_disjoint():
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in rng.integers(0, 150, 600)]
    table = _table({"Edema": rng.choice([P, N, X], 600).tolist()}, patient_id=patients)
    split = splits.assign(table, seed=5)
    assert splits.patients_crossing(table, split) == 0 and set(split) == set(contract.SPLITS)
    assert (splits.assign(table, seed=5) == split).all() and not (splits.assign(table, seed=6) == split).all()
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.05) and shares["test"] == pytest.approx(0.2, abs=0.05)


def test_official_split_without_validation_gets_one_from_train_patients():
    patients = [f"p{i // 2}" for i in range(200)]
    official = ["test" if i < 40 else "train" for i in range(200)]
    table = _table({"Edema": [P, N] * 100}, patient_id=patients, split=official)
    split = splits.assign(table)
    assert (split[:40] == "test").all() and set(split[40:]) == {"train", "validation"}
    assert splits.patients_crossing(table, split) == 0
