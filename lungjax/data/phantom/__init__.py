"""Procedural chest radiographs ("phantoms") and an NIH-format tree writer.

The NIH images cannot be downloaded here, so everything that touches pixels is exercised on
phantoms. Each finding is drawn from the radiological sign a reader would use (cardiothoracic ratio,
meniscus, pleural line, volume loss, round opacity), so a model has something real to learn, while
patient-level variation (size, position, rotation, exposure, noise) keeps the classes from being
separable by a linear model on raw pixels.

Two kinds of film. The six-class task's (``render_radiograph``) show one finding each, drawn in the
reference subset's proportions; they stay byte-identical for a seed, because the demo's published
numbers rest on them. The 14-finding task's (``render_findings``) show any set of NIH's 14 findings,
each by its own sign, together on one film; a tree draws those sets from NIH's own combinations
(``nih_finding_combinations.csv``), so findings co-occur as they do in NIH's metadata.

The modules, each importing only those above it:

* ``anatomy``: the patient and the normal chest on a film, its units and its exposure;
* ``signs``: each finding's radiological sign, drawn onto a film;
* ``sites``: hospitals, what makes their films and labels differ (``Site``, the presets ``SITES``);
* ``six_class`` and ``findings14``: the two kinds of film, and a patient's series of them;
* ``tree``: the NIH-format tree of a task's films (``write_nih_tree``);
* ``studies``: a patient's studies of 14-finding films for the source trees, laterals included;
* ``source_trees``: the trees of the other sources, each in its real format (``write_chexpert_tree``,
  ``write_mimic_tree``, ``write_padchest_tree``, ``write_vindr_tree``, ``write_hospital_tree``).
"""

from lungjax.data.phantom.anatomy import FIELD_OF_VIEW_MM, PatientAnatomy, sample_anatomy
from lungjax.data.phantom.findings14 import (
    COMBINATIONS_FILE,
    MASS_DIAMETER_RANGE_MM,
    NODULE_DIAMETER_RANGE_MM,
    FindingCombinations,
    finding_combinations,
    render_findings,
)
from lungjax.data.phantom.signs import MASS_DIAMETER_MM
from lungjax.data.phantom.sites import SITES, Site
from lungjax.data.phantom.six_class import CLASS_PROBABILITIES, cardiothoracic_ratio, render_radiograph
from lungjax.data.phantom.source_trees import (
    SourceTree,
    write_chexpert_tree,
    write_hospital_tree,
    write_mimic_tree,
    write_padchest_tree,
    write_vindr_tree,
)
from lungjax.data.phantom.tree import write_nih_tree

__all__ = [
    "CLASS_PROBABILITIES",
    "COMBINATIONS_FILE",
    "FIELD_OF_VIEW_MM",
    "MASS_DIAMETER_MM",
    "MASS_DIAMETER_RANGE_MM",
    "NODULE_DIAMETER_RANGE_MM",
    "FindingCombinations",
    "PatientAnatomy",
    "SITES",
    "Site",
    "SourceTree",
    "cardiothoracic_ratio",
    "finding_combinations",
    "render_findings",
    "render_radiograph",
    "sample_anatomy",
    "write_chexpert_tree",
    "write_hospital_tree",
    "write_mimic_tree",
    "write_nih_tree",
    "write_padchest_tree",
    "write_vindr_tree",
]
