"""The six-class task's films: one finding each (or none), drawn in the reference subset's proportions.

They stay byte-identical for a seed, because the demo's published numbers rest on them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lungjax.data.labels import CLASS_NAMES
from lungjax.data.phantom.anatomy import (
    REPEAT_FINDING_PROBABILITY,
    SOFT_TISSUE,
    PatientAnatomy,
    add_abdomen,
    add_breasts,
    add_mediastinum,
    add_ribs_and_clavicles,
    bounding_box,
    expose,
    jitter_anatomy,
    lay_out_chest,
    make_frame,
    normal_lungs,
)
from lungjax.data.phantom.signs import add_atelectasis, add_effusion, add_nodules, aerate_lungs, lose_volume

# Images per class in the reference's six-class subset; films are drawn in these proportions.
CLASS_COUNTS = {
    "Atelectasis": 4215,
    "Cardiomegaly": 1093,
    "Effusion": 3955,
    "Nodule/Mass": 4844,
    "Pneumothorax": 2194,
    "No Finding": 3260,
}
CLASS_PROBABILITIES = np.array([CLASS_COUNTS[name] for name in CLASS_NAMES], dtype=np.float64)
CLASS_PROBABILITIES /= CLASS_PROBABILITIES.sum()
ATELECTASIS, CARDIOMEGALY, EFFUSION, NODULE_MASS, PNEUMOTHORAX, NO_FINDING = range(len(CLASS_NAMES))

PA_VIEW_PROBABILITY = 0.6  # NIH: 60% PA, 40% AP


def cardiothoracic_ratio(label: int, anatomy: PatientAnatomy) -> float:
    """The ratio the heart is drawn with: above 0.5 only for Cardiomegaly, as a reader judges it."""
    return anatomy.enlarged_ctr if label == CARDIOMEGALY else anatomy.heart_ctr


def _render(label: int, anatomy: PatientAnatomy, rng: np.random.Generator, size: int):
    """Draw one film; returns (image, box, NIH finding name)."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES) - 1}], got {label}")
    frame = make_frame(anatomy, size)
    side = rng.choice((-1, 1))  # hemithorax of a one-sided finding
    lungs, mediastinal_shift = normal_lungs(anatomy), 0.0
    if label == ATELECTASIS:
        lungs, mediastinal_shift = lose_volume(lungs, side, rng)
    chest = lay_out_chest(anatomy, frame, lungs, mediastinal_shift, cardiothoracic_ratio(label, anatomy))
    density = SOFT_TISSUE * np.sqrt(chest.body_profile)  # a cylinder's projected thickness
    collapsed_side = side if label == PNEUMOTHORAX else None
    finding_mask = aerate_lungs(density, anatomy, frame, chest, collapsed_side, rng)  # pneumothorax rim or None
    finding_name = CLASS_NAMES[label]
    if label == EFFUSION:
        finding_mask = add_effusion(density, frame, chest, side, rng)
    elif label == ATELECTASIS:
        finding_mask = add_atelectasis(density, frame, chest, side, rng)
    elif label == NODULE_MASS:
        finding_mask, finding_name = add_nodules(density, frame, chest, side, rng)
    elif label == CARDIOMEGALY:
        finding_mask = chest.heart_mask
    add_mediastinum(density, anatomy, frame, chest)
    add_ribs_and_clavicles(density, anatomy, frame, chest)
    add_abdomen(density, frame, chest)
    add_breasts(density, anatomy, frame, chest)
    image = expose(density, anatomy, frame, rng)
    box = None if finding_mask is None else bounding_box(finding_mask)
    if label != NO_FINDING and box is None:  # the sign fell off the film: draw it again
        return _render(label, anatomy, rng, size)
    return image, box, finding_name


def render_radiograph(
    label: int, anatomy: PatientAnatomy, rng: np.random.Generator, size: int = 256
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """A (size, size) uint8 frontal chest film showing the finding ``CLASS_NAMES[label]``.

    Returns the image and the finding's (x, y, w, h) box in its pixels (None for No Finding).
    The side and position of a finding are drawn from ``rng``.
    """
    image, box, _ = _render(label, anatomy, rng, size)
    return image, box


def films(
    anatomy: PatientAnatomy, count: int, rng: np.random.Generator, size: int
) -> Iterator[tuple[str, str, np.ndarray, dict]]:
    """(view, Finding Labels, image, boxes) per film: one class per film, one view per patient.

    The caller draws from ``rng`` between films, so the draws interleave exactly as they always
    have: the six-class trees stay byte-identical.
    """
    view = "PA" if rng.random() < PA_VIEW_PROBABILITY else "AP"
    label = int(rng.choice(len(CLASS_NAMES), p=CLASS_PROBABILITIES))
    for follow_up in range(count):
        if follow_up and rng.random() >= REPEAT_FINDING_PROBABILITY:
            label = int(rng.choice(len(CLASS_NAMES), p=CLASS_PROBABILITIES))
        image, box, finding = _render(label, jitter_anatomy(anatomy, rng), rng, size)
        yield view, finding, image, {} if box is None else {finding: box}
