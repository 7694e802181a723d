"""A phantom patient's studies for the source trees: 14-finding films, a site's look and labeller, laterals.

Each patient is drawn from its own seed (the tree's seed, the tree's stream name and the patient's
number), so a tree's films do not depend on how many patients precede them, and two trees of one seed
but different streams (sources, sites) hold different patients. A study shows one of NIH's finding
combinations (its follow-ups repeat it as NIH's patients do); the site, when there is one, sets the
view, the prevalence, the look of the pixels and what the labeller reports.

A lateral film (``lateral_rate`` of studies) carries the study's findings and labels but frontal pixels:
the phantom draws no lateral projection. Laterals are in the trees so that the view columns and the
frontal filter are exercised; builds keep frontal films by default.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from lungjax.data.phantom.anatomy import REPEAT_FINDING_PROBABILITY, PatientAnatomy, jitter_anatomy, sample_anatomy
from lungjax.data.phantom.findings14 import finding_combinations, render_findings
from lungjax.data.phantom.sites import Site

LATERAL = "lateral"


@dataclasses.dataclass(frozen=True)
class Film:
    """One film of a study: what it shows, what its report says, its view and pixels."""

    study: int  # the patient's study, from 0
    view: str  # "PA", "AP" or LATERAL
    findings: tuple[str, ...]  # shown on the film (FINDINGS14 order; empty: normal)
    labelled: tuple[str, ...]  # reported by the site's labeller (the findings when there is no site)
    image: np.ndarray  # (size, size) uint8


@dataclasses.dataclass(frozen=True)
class Patient:
    number: int
    anatomy: PatientAnatomy  # sex and age among the rest
    films: tuple[Film, ...]


def draw_patient(
    number: int,
    *,
    seed: int,
    stream: str,
    image_size: int,
    studies: tuple[int, int] = (1, 3),
    lateral_rate: float = 0.0,
    site: Site | None = None,
) -> Patient:
    """Patient ``number``'s films: ``studies`` (low, high) studies, each a frontal film and, on
    ``lateral_rate`` of them, a lateral one."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode("utf-8")), number]))
    anatomy = sample_anatomy(rng)
    table = finding_combinations()
    probabilities = None if site is None else site.combination_probabilities(table.images, table.findings)
    films, index = [], None
    for study in range(int(rng.integers(studies[0], studies[1] + 1))):
        if index is None or rng.random() >= REPEAT_FINDING_PROBABILITY:
            index = table.draw(rng, probabilities)
        findings = table.findings[index]
        pa_share = table.pa_images[index] / table.images[index]
        if site is None:
            view = "PA" if rng.random() < pa_share else "AP"
        else:
            view = site.view(pa_share, rng)
        labelled = findings if site is None else site.labelled(findings, rng)
        views = (view, LATERAL) if rng.random() < lateral_rate else (view,)
        for film_view in views:
            image, _ = render_findings(findings, jitter_anatomy(anatomy, rng), rng, image_size)
            if site is not None:
                image = site.expose(image, rng)
            films.append(Film(study, film_view, findings, labelled, image))
    return Patient(number, anatomy, tuple(films))
