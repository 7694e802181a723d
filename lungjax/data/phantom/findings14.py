"""The 14-finding task's films: any set of NIH's 14 findings, each by its own sign, together on one film.

A tree draws those sets from NIH's own combinations (``nih_finding_combinations.csv``, shipped in
``lungjax.data``), so findings co-occur as they do in NIH's metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from collections.abc import Iterable, Iterator

import numpy as np

from lungjax.data import labels
from lungjax.data.labels import FINDINGS14
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
from lungjax.data.phantom.signs import (
    MAX_PLACEMENT_TRIES,
    NODULE_COUNT_PROBABILITIES,
    NODULE_DENSITY,
    add_atelectasis,
    add_consolidation,
    add_edema,
    add_effusion,
    add_hernia,
    add_infiltration,
    add_pleural_thickening,
    add_pneumonia,
    add_reticulation,
    add_round_opacities,
    aerate_lungs,
    fibrotic,
    hyperinflated,
    lose_volume,
)
from lungjax.data.phantom.sites import Site

# NIH's finding combinations and their image counts over all 112,120 rows of Data_Entry_2017_v2020,
# shipped in lungjax.data (pyproject's package-data) because a tree is written where NIH's metadata
# may be absent.
COMBINATIONS_FILE = "nih_finding_combinations.csv"

# These films also vary in depth of inspiration (a deeper breath: darker lungs, lower domes) and in
# how much of the vessels shows, so diffuse signs (hyperlucency, low domes, haze) do not give
# themselves away by mean density or lung size alone.
INSPIRATION_AIR = 0.15  # the lungs' air varies by this share either way
INSPIRATION_DESCENT = 0.06  # and the domes move by this much
MARKINGS_GAIN_RANGE = (0.7, 1.3)
NODULE_DIAMETER_RANGE_MM = (20.0, 29.0)  # under MASS_DIAMETER_MM, yet a few pixels on a 64-pixel film
MASS_DIAMETER_RANGE_MM = (35.0, 65.0)
SMALL_NODULE_DENSITY = 0.6  # the small nodules a film shows are the dense (often calcified) ones
LOWER_LOBE_PROBABILITY = 0.6  # airspace disease favours the lower lobes
INFILTRATION_BILATERAL_PROBABILITY = 0.5
EMPHYSEMA_AIR_GAIN = 1.08  # within the films' own range of aeration: the shape tells, not the darkness
EMPHYSEMA_MARKINGS_KEPT = 0.6  # destroyed lung shows fewer vessels
PLEURAL_BILATERAL_PROBABILITY = 0.4

_ONE_SIDED = ("Atelectasis", "Effusion", "Mass", "Nodule", "Pneumothorax")
_LOBES = ((-1, "upper"), (-1, "lower"), (1, "upper"), (1, "lower"))


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where a film's findings go: the hemithoraces of each, and the (side, lobe) of lobar ones."""

    sides: dict[str, tuple[int, ...]]
    lobes: dict[str, tuple[int, str]]


def _place(findings: frozenset[str], rng: np.random.Generator) -> _Placement:
    """Sides and lobes for the findings; lobar opacities keep off the base an effusion fills and off
    each other's lobe, so signs that would share one place are each still seen."""
    sides = {name: (int(rng.choice((-1, 1))),) for name in _ONE_SIDED if name in findings}
    for name, bilateral in (
        ("Infiltration", INFILTRATION_BILATERAL_PROBABILITY),
        ("Pleural_Thickening", PLEURAL_BILATERAL_PROBABILITY),
    ):
        if name in findings:
            sides[name] = (-1, 1) if rng.random() < bilateral else (int(rng.choice((-1, 1))),)
    taken = {(sides["Effusion"][0], "lower")} if "Effusion" in findings else set()
    lobes = {}
    for name in ("Pneumonia", "Consolidation"):
        if name in findings:
            free = [slot for slot in _LOBES if slot not in taken]
            weights = np.array(
                [LOWER_LOBE_PROBABILITY if lobe == "lower" else 1.0 - LOWER_LOBE_PROBABILITY for _, lobe in free]
            )
            lobes[name] = free[rng.choice(len(free), p=weights / weights.sum())]
            taken.add(lobes[name])
    return _Placement(sides, lobes)


def _render_findings(
    findings: frozenset[str], anatomy: PatientAnatomy, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one film with every finding's sign; returns the image and each finding's pixel mask."""
    depth = rng.uniform(-1.0, 1.0)  # of inspiration
    air_gain, markings_gain = 1.0 + INSPIRATION_AIR * depth, rng.uniform(*MARKINGS_GAIN_RANGE)
    anatomy = dataclasses.replace(anatomy, dome_y=anatomy.dome_y + INSPIRATION_DESCENT * depth)
    place = _place(findings, rng)
    if "Emphysema" in findings:
        anatomy = hyperinflated(anatomy, rng)
    if "Fibrosis" in findings:
        anatomy = fibrotic(anatomy, rng)
    frame = make_frame(anatomy, size)
    lungs, mediastinal_shift = normal_lungs(anatomy), 0.0
    if "Atelectasis" in findings:
        lungs, mediastinal_shift = lose_volume(lungs, place.sides["Atelectasis"][0], rng)
    ctr = anatomy.enlarged_ctr if "Cardiomegaly" in findings else anatomy.heart_ctr
    chest = lay_out_chest(anatomy, frame, lungs, mediastinal_shift, ctr)
    density = SOFT_TISSUE * np.sqrt(chest.body_profile)
    collapsed_side = place.sides["Pneumothorax"][0] if "Pneumothorax" in findings else None
    if "Emphysema" in findings:  # hyperlucent: more air, fewer vessels
        air_gain, markings_gain = air_gain * EMPHYSEMA_AIR_GAIN, markings_gain * EMPHYSEMA_MARKINGS_KEPT
    rim = aerate_lungs(density, anatomy, frame, chest, collapsed_side, rng, air_gain, markings_gain)
    masks = {}
    if rim is not None:
        masks["Pneumothorax"] = rim
    if "Cardiomegaly" in findings:
        masks["Cardiomegaly"] = chest.heart_mask
    if "Emphysema" in findings:
        masks["Emphysema"] = chest.lung_mask
    if "Atelectasis" in findings:
        masks["Atelectasis"] = add_atelectasis(density, frame, chest, place.sides["Atelectasis"][0], rng)
    if "Effusion" in findings:
        masks["Effusion"] = add_effusion(density, frame, chest, place.sides["Effusion"][0], rng)
    if "Infiltration" in findings:
        masks["Infiltration"] = add_infiltration(density, frame, chest, place.sides["Infiltration"], rng)
    if "Mass" in findings:
        diameters = (rng.uniform(*MASS_DIAMETER_RANGE_MM),)
        masks["Mass"] = add_round_opacities(
            density, frame, chest, place.sides["Mass"][0], diameters, NODULE_DENSITY, rng
        )
    if "Nodule" in findings:
        count = 1 + rng.choice(len(NODULE_COUNT_PROBABILITIES), p=NODULE_COUNT_PROBABILITIES)
        diameters = rng.uniform(*NODULE_DIAMETER_RANGE_MM, size=count)
        side = place.sides["Nodule"][0]
        masks["Nodule"] = add_round_opacities(density, frame, chest, side, diameters, SMALL_NODULE_DENSITY, rng)
    if "Pneumonia" in findings:
        masks["Pneumonia"] = add_pneumonia(density, frame, chest, place.lobes["Pneumonia"], rng)
    if "Consolidation" in findings:
        masks["Consolidation"] = add_consolidation(density, frame, chest, place.lobes["Consolidation"], rng)
    if "Edema" in findings:
        masks["Edema"] = add_edema(density, frame, chest, rng)
    if "Fibrosis" in findings:
        masks["Fibrosis"] = add_reticulation(density, frame, chest, rng)
    if "Pleural_Thickening" in findings:
        masks["Pleural_Thickening"] = add_pleural_thickening(
            density, frame, chest, place.sides["Pleural_Thickening"], rng
        )
    if "Hernia" in findings:
        masks["Hernia"] = add_hernia(density, frame, chest, rng)
    add_mediastinum(density, anatomy, frame, chest)
    add_ribs_and_clavicles(density, anatomy, frame, chest)
    add_abdomen(density, frame, chest)
    add_breasts(density, anatomy, frame, chest)
    return expose(density, anatomy, frame, rng), masks


def render_findings(
    findings: Iterable[str], anatomy: PatientAnatomy, rng: np.random.Generator, size: int = 256
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    """A (size, size) uint8 frontal chest film showing each of ``findings`` (names from FINDINGS14;
    none at all is a normal film).

    Returns the image and, per finding in FINDINGS14 order, the (x, y, w, h) box in its pixels of
    the region its sign changes. A film whose sign fell off the image is drawn again, so every
    finding named is visible.
    """
    if isinstance(findings, str):
        raise TypeError(f"findings must be a collection of names, got the string {findings!r}")
    findings = frozenset(findings)
    unknown = sorted(findings - set(FINDINGS14))
    if unknown:
        raise ValueError(f"unknown findings {unknown}; expected names from FINDINGS14 (none for {labels.NO_FINDING!r})")
    for _ in range(MAX_PLACEMENT_TRIES):
        image, masks = _render_findings(findings, anatomy, rng, size)
        boxes = {name: bounding_box(masks[name]) for name in FINDINGS14 if name in masks}
        if all(box is not None for box in boxes.values()):
            return image, boxes
    raise RuntimeError(f"could not fit the signs of {sorted(findings)} on a {size}-pixel film")


@dataclasses.dataclass(frozen=True)
class FindingCombinations:
    """NIH's finding combinations (FINDINGS14 order; empty is No Finding), how many images carry
    exactly each one, and how many of those are PA films."""

    findings: tuple[tuple[str, ...], ...]
    images: np.ndarray
    pa_images: np.ndarray

    def draw(self, rng: np.random.Generator, probabilities: np.ndarray | None = None) -> int:
        """Index of a combination, in NIH's proportions (or in ``probabilities``, one per combination)."""
        if probabilities is None:
            probabilities = self.images / self.images.sum()
        return int(rng.choice(len(self.findings), p=probabilities))


@functools.cache
def finding_combinations() -> FindingCombinations:
    """The table shipped with the package, read once per process (through importlib.resources, so it
    is found in an installed wheel as well as in a checkout)."""
    text = importlib.resources.files("lungjax.data").joinpath(COMBINATIONS_FILE).read_text(encoding="ascii")
    rows = [line.split(",") for line in text.splitlines()[1:]]
    return FindingCombinations(
        findings=tuple(() if names == labels.NO_FINDING else tuple(names.split("|")) for names, _, _ in rows),
        images=np.array([int(images) for _, images, _ in rows], np.int64),
        pa_images=np.array([int(pa) for _, _, pa in rows], np.int64),
    )


def films(
    anatomy: PatientAnatomy, count: int, rng: np.random.Generator, size: int, site: Site | None = None
) -> Iterator[tuple[str, str, np.ndarray, dict]]:
    """(view, Finding Labels, image, boxes) per film: one of NIH's combinations, kept on follow-ups as
    the six-class films keep their class, and the view NIH shows that combination in.

    A ``site`` sets the combinations' proportions, the view, the film's look and what its labeller
    reports (Finding Labels and boxes are those of the reported findings); without one, the draws are
    exactly those of the trees written before sites existed.
    """
    table = finding_combinations()
    probabilities = None if site is None else site.combination_probabilities(table.images, table.findings)
    index = table.draw(rng, probabilities)
    for follow_up in range(count):
        if follow_up and rng.random() >= REPEAT_FINDING_PROBABILITY:
            index = table.draw(rng, probabilities)
        findings = table.findings[index]
        pa_share = table.pa_images[index] / table.images[index]
        view = ("PA" if rng.random() < pa_share else "AP") if site is None else site.view(pa_share, rng)
        reported = findings if site is None else site.labelled(findings, rng)
        image, boxes = render_findings(findings, jitter_anatomy(anatomy, rng), rng, size)
        if site is not None:
            image = site.expose(image, rng)
        boxed = {name: box for name, box in boxes.items() if name in labels.BOXED_FINDINGS and name in reported}
        yield view, "|".join(reported) or labels.NO_FINDING, image, boxed
