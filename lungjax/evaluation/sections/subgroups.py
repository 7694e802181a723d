"""Subgroup audit: each class's AUROC by sex, age band, view position and first film vs follow-up, and
by source for a union of sources.

For NIH's builds the attributes come from ``Data_Entry_2017.csv``'s rows of the evaluated images
(looked up by image name: the metadata is the one record of who a film belongs to); the sources'
builds store each film's sex, age and view in its record (``cells_from_records``), and know no
follow-up order. Each cell holds the images
of one attribute value; its AUROC has a 95% patient-bootstrap interval drawn from the cell's own
patients. A cell with fewer than ``MIN_CELL_CLASS_COUNT`` positives or negatives for a class is
reported as too small to estimate, with its counts and no number. A cell whose whole interval lies
below the class's AUROC over the whole split is flagged: the model is worse there than overall by
more than the cell's sampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lungjax.data import metadata
from lungjax.evaluation.stats import bootstrap, numeric, ranking

MIN_CELL_CLASS_COUNT = 10
AGE_BANDS = (("< 40", 0, 40), ("40-59", 40, 60), (">= 60", 60, metadata.MAX_PLAUSIBLE_AGE + 1))
AGE_MISSING = "age missing"
ATTRIBUTES = ("sex", "age", "view", "follow_up", "source")  # the audit's order; a build has some of them
ATTRIBUTE_TITLES = {"sex": "Sex", "age": "Age band", "view": "View position", "follow_up": "Film", "source": "Source"}
SEX_CELLS = {"M": "male", "F": "female"}  # NIH's and the sources' codes; anything else is "sex missing"


def _age_band(age: int) -> str:
    for name, low, high in AGE_BANDS:
        if low <= age < high:
            return name
    return AGE_MISSING


def cells_of(image_names: Sequence[str], data_entry: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{attribute: (N,) cell name of each image}`` from the metadata rows of ``image_names``.

    Raises ValueError naming images the metadata does not hold: an audit of some images would be
    silently about a different set.
    """
    rows = data_entry.set_index("Image Index").reindex(list(image_names))
    missing = rows.index[rows["Patient ID"].isna()].tolist()
    if missing:
        raise ValueError(
            f"{len(missing)} evaluated images are not in the metadata, e.g. {missing[: metadata.NAMES_SHOWN]}"
        )
    sex = rows["Patient Gender"].map(SEX_CELLS).fillna("sex missing")
    return {
        "sex": sex.to_numpy(dtype=str),
        "age": np.array([_age_band(int(a)) for a in rows["Patient Age"]]),
        "view": rows["View Position"].fillna("view missing").astype(str).to_numpy(),
        "follow_up": np.where(rows["Follow-up #"].astype(int) == 0, "first film", "follow-up").astype(str),
    }


def cells_from_records(
    sex: np.ndarray, age: np.ndarray, view: np.ndarray, source: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``{attribute: (N,) cell name of each image}`` from the sex, age (-1 unknown) and view a source's
    build stores per film (``contract.SEXES``, ``contract.VIEWS``), and each film's source in a union."""
    cells = {
        "sex": np.array([SEX_CELLS.get(str(s), "sex missing") for s in sex]),
        "age": np.array([_age_band(int(a)) for a in age]),
        "view": np.array(["view missing" if v == "unknown" else str(v) for v in view]),
    }
    if source is not None:
        cells["source"] = np.asarray(source).astype(str)
    return cells


def _cell_order(attribute: str, values: np.ndarray) -> list[str]:
    present = set(values.tolist())
    fixed = {
        "sex": ["female", "male", "sex missing"],
        "age": [name for name, _, _ in AGE_BANDS] + [AGE_MISSING],
        "follow_up": ["first film", "follow-up"],
    }.get(attribute)
    return [v for v in fixed if v in present] if fixed else sorted(present)


def audit(
    positive: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    cells: dict[str, np.ndarray],
    *,
    patient_ids: np.ndarray,
    n_bootstrap: int,
    seed: int,
    stated: np.ndarray | None = None,
) -> dict:
    """``{"attributes": {attribute: {cell: {images, patients, per_class: {...}}}}, ...}`` (module doc).

    ``positive``/``scores`` are the evaluated split's columns (``kinds.Kind.columns``), ``stated`` the
    entries that count (``kinds.Kind.stated``; all when None): each class is scored on the images of the
    cell that state it. Each class row holds positives, negatives and either ``auroc`` with its ``ci``
    and ``below_overall``, or ``too_small`` with the reason.
    """
    patient_ids = np.asarray(patient_ids)
    stated = np.ones(positive.shape, bool) if stated is None else stated
    overall_auroc = [  # an image that does not state a class weighs 0 in it
        ranking.weighted_auroc(positive[:, c], scores[:, c], stated[None, :, c].astype(np.float64))[0]
        for c in range(len(class_names))
    ]
    report = {}
    for attribute in (a for a in ATTRIBUTES if a in cells):
        values = cells[attribute]
        report[attribute] = {}
        for cell in _cell_order(attribute, values):
            inside = values == cell
            per_class = {}
            for c, name in enumerate(class_names):
                rows = inside & stated[:, c]
                n_pos = int(positive[rows, c].sum())
                n_neg = int(rows.sum()) - n_pos
                row = {"positives": n_pos, "negatives": n_neg}
                if min(n_pos, n_neg) < MIN_CELL_CLASS_COUNT:
                    row["too_small"] = f"fewer than {MIN_CELL_CLASS_COUNT} positives or negatives"
                else:
                    column = (positive[rows, c], scores[rows, c])
                    row["auroc"] = float(ranking.weighted_auroc(*column, np.ones((1, n_pos + n_neg)))[0])
                    if n_bootstrap:
                        draws = bootstrap.bootstrap_replicates(
                            lambda weights, column=column: {"auroc": ranking.weighted_auroc(*column, weights)},
                            patient_ids[rows],
                            n_bootstrap,
                            seed,
                        )
                        row["ci"] = bootstrap.interval(draws["auroc"])
                        high = row["ci"]["high"]
                        row["below_overall"] = bool(high is not None and high < overall_auroc[c])
                per_class[name] = row
            report[attribute][cell] = {
                "images": int(inside.sum()),
                "patients": int(np.unique(patient_ids[inside]).size),
                "per_class": per_class,
            }
    flagged = [
        {"attribute": attribute, "cell": cell, "class": name}
        for attribute, cells_ in report.items()
        for cell, row in cells_.items()
        for name, figures in row["per_class"].items()
        if figures.get("below_overall")
    ]
    return {
        "min_cell_class_count": MIN_CELL_CLASS_COUNT,
        "overall_auroc": {name: numeric.optional_float(a) for name, a in zip(class_names, overall_auroc, strict=True)},
        "attributes": report,
        "flagged": flagged,
    }
