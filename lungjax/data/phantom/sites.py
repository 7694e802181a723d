"""Hospitals: what makes one site's films and labels differ from another's, applied to phantom films.

Zech et al. (PLOS Medicine 2018) showed a CNN tells which hospital a film came from almost perfectly,
and Cohen et al. (MIDL 2020) traced most of the cross-dataset drop to label shift. A :class:`Site`
reproduces both kinds of difference on the phantom:

* on the pixels, after a film is rendered (:meth:`Site.expose`): the exposure and contrast curve of
  its processing, extra quantum noise, a coarser detector (downsampled, then enlarged back),
  collimation shutters (masked to black as a DR console displays them) and burned-in markers (bright
  text-like patches in one corner);
* when films are chosen: its share of portable AP films (:meth:`Site.view`), its label prevalence
  (:meth:`Site.combination_probabilities`: factors on the weights of NIH's finding combinations), and
  a labeller who misses small findings, nodules, at a set rate (:meth:`Site.labelled`).

``SITES`` holds three presets: ``A`` (a reference department), ``B`` (older, darker, noisier films,
more effusions) and ``C`` (an intensive-care heavy hospital: mostly portable AP films at low
resolution, more effusion, oedema and pneumothorax, and a labeller who misses nodules). No site at all
(``site=None`` where a writer takes one) changes nothing: those trees are byte-identical to before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import cv2
import numpy as np

from lungjax.data.labels import FINDINGS14

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
SHUTTER_LEVEL = 0  # collimated borders, masked to black
MARKER_LEVEL = 255  # burned-in text is drawn at full brightness
# A burned-in marker: MARKER_CHARACTERS glyphs of GLYPH_CELLS (columns, rows), each cell lit at random
# (a glyph keeps at least MIN_LIT_CELLS), one cell apart, MARKER_MARGIN cells from the corner's edges.
# A cell is size // MARKER_CELL_DIVISOR pixels (at least one), so a marker covers the same share of any film.
MARKER_CHARACTERS = 4
GLYPH_CELLS = (3, 5)
MIN_LIT_CELLS = 7
MARKER_MARGIN = 2
MARKER_CELL_DIVISOR = 64
MISSED_FINDING = "Nodule"  # the small finding a careless labeller misses


@dataclasses.dataclass(frozen=True)
class Site:
    """One hospital's films and labels. The defaults change nothing; a preset sets what differs."""

    name: str
    exposure: float = 0.0  # added to the [0, 1] film before the curve: brighter (+) or darker (-)
    contrast: float = 1.0  # slope of the processing curve around mid-grey
    gamma: float = 1.0  # the curve's exponent on [0, 1]: above 1 darkens the mid-tones
    noise: float = 0.0  # extra quantum noise, standard deviation as a fraction of full scale
    downsample: int = 1  # the detector is this many times coarser: shrunk (area mean), enlarged back
    collimation: float = 0.0  # share of the film's side each shutter covers, on all four sides
    marker_rate: float = 0.0  # films with a burned-in marker
    marker_corner: str = "top_left"
    ap_rate: float | None = None  # portable AP films; None keeps NIH's share for each finding combination
    # finding -> factor on the weight of each NIH combination holding it
    prevalence: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    missed_nodule_rate: float = 0.0  # the labeller leaves Nodule out of this share of nodule films

    def __post_init__(self):
        if not self.name:
            raise ValueError("a site needs a name")
        for field, value in (("contrast", self.contrast), ("gamma", self.gamma)):
            if not value > 0:
                raise ValueError(f"site {self.name}: {field} must be > 0, got {value!r}")
        rates = {"marker_rate": self.marker_rate, "missed_nodule_rate": self.missed_nodule_rate}
        if self.ap_rate is not None:
            rates["ap_rate"] = self.ap_rate
        for field, value in rates.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"site {self.name}: {field} must be in [0, 1], got {value!r}")
        if self.noise < 0 or not 0.0 <= self.collimation < 0.25:
            raise ValueError(f"site {self.name}: noise must be >= 0 and collimation in [0, 0.25)")
        if not isinstance(self.downsample, int) or self.downsample < 1:
            raise ValueError(f"site {self.name}: downsample must be an integer >= 1, got {self.downsample!r}")
        if self.marker_corner not in CORNERS:
            raise ValueError(f"site {self.name}: marker_corner must be one of {CORNERS}, got {self.marker_corner!r}")
        factors = dict(self.prevalence)
        if set(factors) - set(FINDINGS14) or any(not factor > 0 for factor in factors.values()):
            raise ValueError(
                f"site {self.name}: prevalence maps findings of FINDINGS14 to factors > 0, got {self.prevalence!r}"
            )
        # Held as sorted pairs, so a Site hashes, compares and pickles (to the tree writer's workers).
        object.__setattr__(self, "prevalence", tuple(sorted(factors.items())))

    def curve(self, film: np.ndarray) -> np.ndarray:
        """The processing curve on a [0, 1] film: contrast about mid-grey, exposure, clipped, then gamma."""
        return np.clip(0.5 + self.contrast * (film - 0.5) + self.exposure, 0.0, 1.0) ** self.gamma

    def expose(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The site's look on a rendered (size, size) uint8 film: curve, detector resolution, noise,
        shutters, then a marker on ``marker_rate`` of films. Draws from ``rng`` only what it uses."""
        size = image.shape[0]
        film = self.curve(image.astype(np.float32) / 255.0)
        if self.downsample > 1:
            small = max(1, size // self.downsample)
            film = cv2.resize(cv2.resize(film, (small, small), interpolation=cv2.INTER_AREA), (size, size))
        if self.noise > 0:
            film = film + self.noise * rng.standard_normal(film.shape, dtype=np.float32)
        out = np.clip(film * 255.0 + 0.5, 0, 255).astype(np.uint8)
        band = self.shutter_width(size)
        if band:
            out[:band], out[-band:], out[:, :band], out[:, -band:] = (SHUTTER_LEVEL,) * 4
        if self.marker_rate > 0 and rng.random() < self.marker_rate:
            self._burn_in_marker(out, rng)
        return out

    def shutter_width(self, size: int) -> int:
        """Pixels each collimation shutter covers on a film of ``size``."""
        return int(round(self.collimation * size))

    def marker_box(self, size: int) -> tuple[slice, slice]:
        """(rows, columns) of the corner patch a marker is burned into on a film of ``size``."""
        cell = max(1, size // MARKER_CELL_DIVISOR)
        glyph_w, glyph_h = GLYPH_CELLS
        width, height = cell * (MARKER_CHARACTERS * (glyph_w + 1) - 1), cell * glyph_h
        inset = self.shutter_width(size) + MARKER_MARGIN * cell  # inside the exposed field
        top = inset if self.marker_corner.startswith("top") else size - inset - height
        left = inset if self.marker_corner.endswith("left") else size - inset - width
        return slice(top, top + height), slice(left, left + width)

    def _burn_in_marker(self, image: np.ndarray, rng: np.random.Generator) -> None:
        rows, columns = self.marker_box(image.shape[0])
        cell = max(1, image.shape[0] // MARKER_CELL_DIVISOR)
        glyph_w, glyph_h = GLYPH_CELLS
        patch = image[rows, columns]
        for k in range(MARKER_CHARACTERS):
            lit = rng.random((glyph_h, glyph_w)) < 0.5
            while lit.sum() < MIN_LIT_CELLS:
                lit[rng.integers(glyph_h), rng.integers(glyph_w)] = True
            glyph = np.kron(lit, np.ones((cell, cell), bool))
            x = k * (glyph_w + 1) * cell
            patch[:, x : x + glyph_w * cell][glyph] = MARKER_LEVEL

    def view(self, pa_share: float, rng: np.random.Generator) -> str:
        """PA or AP: AP (portable) on ``ap_rate`` of films, or on the combination's NIH share when unset
        (then drawn exactly as a film without a site draws it)."""
        if self.ap_rate is not None:
            pa_share = 1.0 - self.ap_rate
        return "PA" if rng.random() < pa_share else "AP"

    def combination_probabilities(self, images: np.ndarray, findings: tuple[tuple[str, ...], ...]) -> np.ndarray:
        """NIH's combination frequencies, each weighted by the product of its findings' factors."""
        factors = dict(self.prevalence)
        weights = np.asarray(images, np.float64).copy()
        for k, names in enumerate(findings):
            for name in names:
                weights[k] *= factors.get(name, 1.0)
        return weights / weights.sum()

    def labelled(self, findings: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
        """The findings the site's labeller reports: Nodule left out on ``missed_nodule_rate`` of the
        films that show one (a film whose only finding it was is then reported normal)."""
        if MISSED_FINDING in findings and self.missed_nodule_rate > 0 and rng.random() < self.missed_nodule_rate:
            return tuple(name for name in findings if name != MISSED_FINDING)
        return findings


SITES = MappingProxyType(
    {
        "A": Site("A", marker_rate=0.2, marker_corner="top_left", ap_rate=0.3),
        "B": Site(
            "B",
            exposure=-0.08,
            contrast=0.8,
            gamma=1.3,
            noise=0.04,
            downsample=2,
            collimation=0.06,
            marker_rate=0.9,
            marker_corner="top_right",
            ap_rate=0.45,
            prevalence={"Effusion": 2.0, "Cardiomegaly": 1.5},
        ),
        "C": Site(
            "C",
            exposure=0.06,
            contrast=1.25,
            gamma=0.8,
            noise=0.02,
            downsample=4,
            collimation=0.1,
            marker_rate=1.0,
            marker_corner="bottom_left",
            ap_rate=0.8,
            prevalence={"Effusion": 3.0, "Edema": 3.0, "Pneumothorax": 2.0, "Nodule": 0.5},
            missed_nodule_rate=0.4,
        ),
    }
)


def site(name_or_site: str | Site | None) -> Site | None:
    """A preset's name, a Site, or None (no site effect) -> the Site or None; an unknown name is refused."""
    if name_or_site is None or isinstance(name_or_site, Site):
        return name_or_site
    if name_or_site not in SITES:
        raise ValueError(f"unknown site {name_or_site!r}; the presets are {', '.join(SITES)}, or pass a Site")
    return SITES[name_or_site]
