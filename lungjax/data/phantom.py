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

Geometry lives in "anatomical units": the field of view spans [-1, 1] on both axes before the
patient's zoom, offset and rotation are applied; x grows towards the image right (the patient's
left, radiological convention) and y grows downwards. Densities are unitless attenuation values
that are blurred, windowed and quantised to 8 bits at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import pathlib
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from lungjax.data import labels, tasks, workers
from lungjax.data.labels import CLASS_NAMES, FINDINGS14

# --- NIH file format -------------------------------------------------------------------------
DATA_ENTRY_FILE = "Data_Entry_2017.csv"
BBOX_FILE = "BBox_List_2017.csv"
IMAGE_SUBDIR = pathlib.Path("images_001") / "images"
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# NIH's finding combinations and their image counts over all 112,120 rows of Data_Entry_2017_v2020,
# shipped in the package because a tree is written where NIH's metadata may be absent.
COMBINATIONS_FILE = "nih_finding_combinations.csv"

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

# A follow-up film repeats the previous film's class this often (the rest redraw from the
# proportions, so the marginal frequencies are unchanged); it makes patient leakage matter.
REPEAT_FINDING_PROBABILITY = 0.5
MALE_PROBABILITY = 0.56  # NIH: 56% of images are of men
PA_VIEW_PROBABILITY = 0.6  # NIH: 60% PA, 40% AP
AGE_MEAN, AGE_STD, AGE_RANGE = 47.0, 17.0, (2, 92)

# --- physical scale --------------------------------------------------------------------------
FIELD_OF_VIEW_MM = 430.0  # detector width; an anatomical unit is half of it at zoom 1
MASS_DIAMETER_MM = 30.0  # NIH/Fleischner: a round opacity over 3 cm is a mass, else a nodule

# --- densities (unitless attenuation) --------------------------------------------------------
SOFT_TISSUE = 1.0
LUNG_AIR = 0.62  # subtracted from soft tissue inside the aerated lungs
LUNG_MARKINGS = 0.22
HEART_EXTRA = 0.12
SPINE_EXTRA = 0.35
RIB_EXTRA = 0.24
LIVER_EXTRA = 0.08
GASTRIC_AIR = 0.35
BREAST_EXTRA = 0.12
PLEURAL_LINE_EXTRA = 0.32
PNEUMOTHORAX_AIR = 0.16  # extra lucency where the lung has pulled away from the chest wall
EFFUSION_DENSITY = 0.55  # fluid adds most of the soft tissue back
ATELECTASIS_DENSITY = 0.4
NODULE_DENSITY = 0.45
BLUR_SIGMA_FRACTION = 1.0 / 160.0  # softness of every edge, as a fraction of the image size

# --- finding geometry ------------------------------------------------------------------------
NORMAL_CTR_RANGE = (0.36, 0.48)
ENLARGED_CTR_RANGE = (0.54, 0.64)
NODULE_RADIUS_RANGE = (0.035, 0.075)  # anatomical units: ~15-32 mm diameter at zoom 1
MASS_RADIUS_RANGE = (0.075, 0.13)
MASS_PROBABILITY = 0.45  # NIH: 2,139 Mass vs 2,705 Nodule single-label images
NODULE_COUNT_PROBABILITIES = (0.65, 0.25, 0.10)  # one, two or three opacities
PNEUMOTHORAX_COLLAPSE_RANGE = (0.8, 0.92)  # collapsed lung size relative to the hemithorax
EFFUSION_LEVEL_RANGE = (0.06, 0.45)  # height of the fluid above the costophrenic angle
MENISCUS_RISE_RANGE = (0.06, 0.16)  # how far the fluid climbs the lateral chest wall
VOLUME_LOSS_ELEVATION = (0.04, 0.09)  # raised hemidiaphragm in atelectasis
VOLUME_LOSS_NARROWING = (0.92, 0.97)
MIN_BOX_PIXELS = 2
MAX_PLACEMENT_TRIES = 200

# --- the 14-finding signs (anatomical units and densities, as above) ----------------------------
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
FISSURE_LEVEL_RANGE = (0.4, 0.55)  # fraction of the apex-to-base height where the lobes meet
FISSURE_TILT_RANGE = (-0.2, 0.2)
CONSOLIDATION_DENSITY = 0.5  # airless lung: nearly all the air replaced
SEGMENT_PROBABILITY = 0.4  # a segment rather than the whole lobe
SEGMENT_RADIUS_RANGE = (0.16, 0.26)
BRONCHOGRAM_AIR = 0.3  # air left in the bronchi crossing an airless region
BRONCHUS_COUNT_RANGE = (16, 26)  # bronchi per full turn around the hilum
BRONCHUS_REACH = (0.06, 0.4)  # distances from the hilum where bronchi are visible
PNEUMONIA_DENSITY = 0.5
PNEUMONIA_RADIUS_RANGE = (0.18, 0.28)
PNEUMONIA_LOBAR_PROBABILITY = 0.5
PNEUMONIA_CELLS = 10  # noise cells across the film: the mottling's scale
INFILTRATION_DENSITY = 0.32
INFILTRATION_CELLS = 16
INFILTRATION_BILATERAL_PROBABILITY = 0.5
EDEMA_DENSITY_RANGE = (0.1, 0.24)  # the haze's peak: mild to marked edema
EDEMA_REACH_RANGE = (0.17, 0.25)  # horizontal radius of the perihilar haze
EDEMA_BOX_LEVEL = 0.5  # the haze's box is where it reaches this share of its peak
KERLEY_DENSITY = 0.4
KERLEY_LENGTH_RANGE = (0.06, 0.1)  # septal lines run in from the lateral pleura of the bases
KERLEY_SPACING = 0.05
KERLEY_THICKNESS = 0.02
EMPHYSEMA_WIDTH_GAIN = (1.02, 1.08)
EMPHYSEMA_APEX_RISE = (0.03, 0.06)
EMPHYSEMA_DIAPHRAGM_DESCENT = (0.06, 0.12)
EMPHYSEMA_DOME_KEPT = (0.25, 0.5)  # flattened domes keep this share of their height
EMPHYSEMA_RIB_SPREAD = (1.08, 1.18)  # horizontal, widely spaced ribs
EMPHYSEMA_HEART_NARROWING = (0.82, 0.92)  # the long, narrow heart of hyperinflation
EMPHYSEMA_AIR_GAIN = 1.08  # within the films' own range of aeration: the shape tells, not the darkness
EMPHYSEMA_MARKINGS_KEPT = 0.6  # destroyed lung shows fewer vessels
CHEST_WALL = 0.14  # medial gap plus soft tissue: a lung stays this far inside the body outline
FIBROSIS_APEX_DESCENT = (0.03, 0.08)  # upper-lobe volume loss
FIBROSIS_NARROWING = (0.9, 0.96)
FIBROSIS_DENSITY = 0.25
FIBROSIS_CELLS = 22
FIBROSIS_LINE_WIDTH = 0.3  # in noise standard deviations: the reticulation's line width
FIBROSIS_UPPER_ZONE = (0.15, 0.6)  # full reticulation above the first fraction, none below the second
PLEURAL_RIND_DENSITY = 0.5
PLEURAL_RIND_RANGE = (0.04, 0.07)  # thickness along the lateral chest wall
APICAL_CAP_RANGE = (0.08, 0.13)
PLEURAL_BILATERAL_PROBABILITY = 0.4
HERNIA_RADIUS_RANGE = (0.08, 0.12)
HERNIA_GAS = 0.4  # bowel gas above the diaphragm, behind the heart
HERNIA_WALL = 0.1
HERNIA_FLUID_LEVEL_RANGE = (-0.2, 0.4)  # air-fluid level below the centre, in radii

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class PatientAnatomy:
    """Everything that makes one patient look different from another.

    Lengths are anatomical units (see the module docstring). Films of one patient share it, with
    small per-film changes from ``jitter_anatomy``.
    """

    zoom: float  # body size relative to the detector
    offset_x: float
    offset_y: float
    rotation_deg: float
    body_half_width: float
    lung_width: float  # mediastinum-to-chest-wall width of each lung at the bases
    lung_top: float
    dome_y: float  # level of the costophrenic angles
    dome_height: float  # how far the diaphragm domes rise above the angles
    heart_ctr: float  # the patient's normal cardiothoracic ratio
    enlarged_ctr: float  # the ratio this patient shows when cardiomegalic
    heart_half_height: float
    rib_spacing: float
    rib_phase: float
    exposure: float  # brightness offset of the film
    contrast: float
    gamma: float
    noise: float  # standard deviation of the quantum noise (fraction of full scale)
    heel_x: float  # low-frequency exposure gradient (anode heel effect, positioning)
    heel_y: float
    bone_density: float  # falls with age
    age: int
    sex: str  # "M" or "F"
    texture_seed: int  # the patient's own pattern of lung markings


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient; the spread is what keeps a linear model on raw pixels from winning."""
    sex = "M" if rng.random() < MALE_PROBABILITY else "F"
    age = int(np.clip(round(rng.normal(AGE_MEAN, AGE_STD)), *AGE_RANGE))
    size = 1.0 if sex == "M" else 0.95
    return PatientAnatomy(
        zoom=float(rng.uniform(0.82, 1.06) * size),
        offset_x=float(rng.uniform(-0.1, 0.1)),
        offset_y=float(rng.uniform(-0.1, 0.1)),
        rotation_deg=float(rng.uniform(-8.0, 8.0)),
        body_half_width=float(rng.uniform(0.76, 0.92)),
        lung_width=float(rng.uniform(0.52, 0.62)),
        lung_top=float(rng.uniform(-0.8, -0.68)),
        dome_y=float(rng.uniform(0.32, 0.54)),
        dome_height=float(rng.uniform(0.08, 0.15)),
        heart_ctr=float(rng.uniform(*NORMAL_CTR_RANGE)),
        enlarged_ctr=float(rng.uniform(*ENLARGED_CTR_RANGE)),
        heart_half_height=float(rng.uniform(0.2, 0.27)),
        rib_spacing=float(rng.uniform(0.11, 0.14)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        exposure=float(rng.uniform(-0.12, 0.12)),
        contrast=float(rng.uniform(0.75, 1.2)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.015, 0.05)),
        heel_x=float(rng.uniform(-0.12, 0.12)),
        heel_y=float(rng.uniform(-0.12, 0.12)),
        bone_density=float(np.clip(1.25 - age / 100.0, 0.5, 1.2)),
        age=age,
        sex=sex,
        texture_seed=int(rng.integers(2**31)),
    )


def jitter_anatomy(anatomy: PatientAnatomy, rng: np.random.Generator) -> PatientAnatomy:
    """The same patient on another day: positioning, inspiration, exposure and noise change."""
    return dataclasses.replace(
        anatomy,
        offset_x=anatomy.offset_x + float(rng.uniform(-0.025, 0.025)),
        offset_y=anatomy.offset_y + float(rng.uniform(-0.025, 0.025)),
        rotation_deg=anatomy.rotation_deg + float(rng.uniform(-1.5, 1.5)),
        dome_y=anatomy.dome_y + float(rng.uniform(-0.02, 0.02)),
        exposure=anatomy.exposure + float(rng.uniform(-0.05, 0.05)),
        contrast=anatomy.contrast * float(rng.uniform(0.95, 1.05)),
        noise=anatomy.noise * float(rng.uniform(0.8, 1.25)),
        heel_x=anatomy.heel_x + float(rng.uniform(-0.03, 0.03)),
        heel_y=anatomy.heel_y + float(rng.uniform(-0.03, 0.03)),
    )


def cardiothoracic_ratio(label: int, anatomy: PatientAnatomy) -> float:
    """The ratio the heart is drawn with: above 0.5 only for Cardiomegaly, as a reader judges it."""
    return anatomy.enlarged_ctr if label == CARDIOMEGALY else anatomy.heart_ctr


@dataclasses.dataclass(frozen=True)
class _Lung:
    """One hemithorax; ``side`` is -1 for the patient's right (image left), +1 for the left."""

    side: int
    medial: float
    width: float
    top: float
    dome_y: float
    dome_height: float

    def level(self, x, y):
        """Implicit shape: < 1 inside the aerated lung. Works on scalars and arrays."""
        lateral = self.side * x - self.medial
        # The lung widens from apex to base; the apex is an elliptical dome.
        t = np.clip((y - self.top) / (self.dome_y - self.top), 0.0, 1.0)
        half = 0.5 * self.width * (0.8 + 0.2 * t)
        centre = lateral - half
        apex_radius = 0.55 * self.width
        above = np.minimum(y - (self.top + apex_radius), 0.0)
        wall = (centre / half) ** 2 + (above / apex_radius) ** 2
        # Diaphragm dome: highest mid-lung, deepest at the costophrenic angle and medially.
        dome = self.dome_y - self.dome_height * np.clip(1.0 - (centre / half) ** 2, 0.0, 1.0)
        return np.maximum(wall, 1.0 + (y - dome) / (0.25 * self.width))

    def lateral_edge(self) -> float:
        return self.side * (self.medial + self.width)

    def lateral_depth(self, x, y):
        """Distance in from the lateral chest wall (below the apex), the wall ``level`` draws."""
        t = np.clip((y - self.top) / (self.dome_y - self.top), 0.0, 1.0)
        return self.width * (0.8 + 0.2 * t) - (self.side * x - self.medial)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A band-limited random field, cheap: upsample a coarse grid."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight (x, y, w, h) box around a pixel mask, or None when it is (nearly) empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size < MIN_BOX_PIXELS or cols.size < MIN_BOX_PIXELS:
        return None
    return (
        float(cols[0]),
        float(rows[0]),
        float(cols[-1] - cols[0] + 1),
        float(rows[-1] - rows[0] + 1),
    )


def _sample_point_in_lung(lung: _Lung, heart, radius: float, rng: np.random.Generator):
    """Rejection-sample a centre whose disc lies inside the lung and off the heart.

    Falls back to the mid-lung point when the lung is too small for the disc, so a call always
    ends (the opacity then overlaps an edge, which is still a visible finding).
    """
    x_lo, x_hi = sorted((lung.side * lung.medial, lung.lateral_edge()))
    inner = dataclasses.replace(
        lung,
        medial=lung.medial + radius,
        width=lung.width - 2 * radius,
        top=lung.top + radius,
        dome_y=lung.dome_y - radius,
    )
    hx, hy, hw, hh = heart
    for _ in range(MAX_PLACEMENT_TRIES):
        x = rng.uniform(x_lo, x_hi)
        y = rng.uniform(lung.top, lung.dome_y)
        off_heart = ((x - hx) / (hw + radius)) ** 2 + ((y - hy) / (hh + radius)) ** 2 > 1.0
        if inner.width > 0 and inner.level(x, y) < 1.0 and off_heart:
            return x, y
    return 0.5 * (x_lo + x_hi), 0.5 * (lung.top + lung.dome_y)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """One film's pixel grid: detector coordinates (px, py) and the patient's anatomical ones (x, y)."""

    size: int
    px: np.ndarray
    py: np.ndarray
    x: np.ndarray
    y: np.ndarray
    units_to_px: float


@dataclasses.dataclass(frozen=True)
class _Chest:
    """The thorax laid out on one film: the shapes and masks that every finding is placed against."""

    lungs: dict[int, _Lung]
    lung_levels: dict[int, np.ndarray]
    lung_mask: np.ndarray
    mediastinal_shift: float
    heart: tuple[float, float, float, float]
    heart_mask: np.ndarray
    mediastinum: np.ndarray
    ax: np.ndarray  # distance from the (shifted) midline
    body_profile: np.ndarray


def _frame(anatomy: PatientAnatomy, size: int) -> _Frame:
    """Pixel centres in [-1, 1], mapped through the patient's offset, rotation and zoom."""
    a = anatomy
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    px, py = np.meshgrid(axis, axis)
    theta = np.deg2rad(a.rotation_deg)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = px - a.offset_x, py - a.offset_y
    x = (c * dx + s * dy) / a.zoom
    y = (-s * dx + c * dy) / a.zoom
    return _Frame(size, px, py, x, y, units_to_px=a.zoom * size / 2.0)


def _normal_lungs(anatomy: PatientAnatomy) -> dict[int, _Lung]:
    """Both hemithoraces of this anatomy, keyed by side; the right dome sits higher."""
    a = anatomy
    return {
        lung_side: _Lung(lung_side, 0.1, a.lung_width, a.lung_top, a.dome_y + dome_offset, a.dome_height)
        for lung_side, dome_offset in ((-1, -0.03), (1, 0.0))
    }


def _lose_volume(lungs: dict[int, _Lung], side: int, rng: np.random.Generator) -> tuple[dict[int, _Lung], float]:
    """Atelectasis' volume loss on ``side``: raised hemidiaphragm, smaller lung, heart shifted towards it."""
    lost = lungs[side]
    lungs = {
        **lungs,
        side: dataclasses.replace(
            lost,
            width=lost.width * rng.uniform(*VOLUME_LOSS_NARROWING),
            dome_y=lost.dome_y - rng.uniform(*VOLUME_LOSS_ELEVATION),
        ),
    }
    return lungs, side * rng.uniform(0.015, 0.035)


def _heart_ellipse(
    ctr: float, anatomy: PatientAnatomy, lungs: dict[int, _Lung], mediastinal_shift: float
) -> tuple[float, float, float, float]:
    """Heart (x, y, half-width, half-height): CTR x thoracic width, a third right of the midline."""
    thoracic_width = lungs[1].lateral_edge() - lungs[-1].lateral_edge()
    heart_width = ctr * thoracic_width
    heart_half_height = anatomy.heart_half_height
    return (
        heart_width / 6.0 + mediastinal_shift,
        anatomy.dome_y + 0.04 - 0.85 * heart_half_height,  # its base hides behind the diaphragm
        heart_width / 2.0,
        heart_half_height,
    )


def _chest(
    anatomy: PatientAnatomy, frame: _Frame, lungs: dict[int, _Lung], mediastinal_shift: float, ctr: float
) -> _Chest:
    """Lay out body outline, lungs, heart (at cardiothoracic ratio ``ctr``) and mediastinum on the film's pixels."""
    x, y = frame.x, frame.y
    heart = _heart_ellipse(ctr, anatomy, lungs, mediastinal_shift)
    hx, hy, hw, hh = heart
    heart_mask = ((x - hx) / hw) ** 2 + ((y - hy) / hh) ** 2 < 1.0

    ax = np.abs(x - mediastinal_shift)
    body_half = anatomy.body_half_width * (1.0 - 0.35 * np.clip((-0.7 - y) / 0.3, 0.0, 1.0))
    body_profile = np.clip(1.0 - (x / body_half) ** 2, 0.0, 1.0)

    mediastinum_half = 0.09 + 0.03 * np.clip((-0.2 - y) / 0.4, 0.0, 1.0)
    mediastinum = (ax < mediastinum_half) | heart_mask
    lung_levels = {k: lung.level(x, y) for k, lung in lungs.items()}
    lung_mask = ((lung_levels[-1] < 1.0) | (lung_levels[1] < 1.0)) & ~mediastinum
    return _Chest(lungs, lung_levels, lung_mask, mediastinal_shift, heart, heart_mask, mediastinum, ax, body_profile)


def _lung_markings(anatomy: PatientAnatomy, frame: _Frame, chest: _Chest) -> np.ndarray:
    """Vessel-like ridges from the patient's own texture, densest at the hila."""
    texture_rng = np.random.default_rng(anatomy.texture_seed)
    field = _smooth_noise(texture_rng, 14, frame.size)
    vessels = np.exp(-((field / 0.35) ** 2))
    hilar = np.exp(-(((chest.ax - 0.2) / 0.35) ** 2 + ((frame.y + 0.05) / 0.45) ** 2))
    return LUNG_MARKINGS * vessels * (0.35 + hilar)


def _pneumothorax_signs(
    frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the lucent rim and the visceral pleural line of a lung collapsed on ``side``."""
    x, y = frame.x, frame.y
    lung = chest.lungs[side]
    inside = chest.lung_levels[side] < 1.0
    # The lung collapses towards its base and hilum, leaving a lucent apical/lateral rim.
    cx = side * (lung.medial + 0.25 * lung.width)
    cy = lung.dome_y
    k = rng.uniform(*PNEUMOTHORAX_COLLAPSE_RANGE)
    collapsed = lung.level(cx + (x - cx) / k, cy + (y - cy) / k) < 1.0
    rim = inside & ~collapsed & ~chest.mediastinum
    thickness = max(1, frame.size // 128)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    inner = cv2.erode(collapsed.astype(np.uint8), kernel).astype(bool)
    return rim, collapsed & ~inner & inside


def _aerate_lungs(
    density: np.ndarray,
    anatomy: PatientAnatomy,
    frame: _Frame,
    chest: _Chest,
    collapsed_side: int | None,
    rng: np.random.Generator,
    air_gain: float = 1.0,
    markings_gain: float = 1.0,
) -> np.ndarray | None:
    """Subtract the lungs' air (``air_gain`` x LUNG_AIR) and add their markings in place; returns a
    pneumothorax's rim, if any."""
    markings = markings_gain * _lung_markings(anatomy, frame, chest)
    aerated = chest.lung_mask.astype(np.float32)
    lung_air = (LUNG_AIR * air_gain) * aerated
    rim = None
    if collapsed_side is not None:  # a pneumothorax changes the air, so it comes first
        rim, pleural_line = _pneumothorax_signs(frame, chest, collapsed_side, rng)
        markings = np.where(rim, 0.0, markings)
        lung_air = lung_air + PNEUMOTHORAX_AIR * rim
        density += PLEURAL_LINE_EXTRA * pleural_line
    density -= lung_air
    density += markings * aerated
    return rim


def _add_effusion(density: np.ndarray, frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Fluid with a meniscus in the base of the ``side`` lung, in place; returns its mask."""
    x, y = frame.x, frame.y
    lung = chest.lungs[side]
    lateral = np.clip((side * x - lung.medial) / lung.width, 0.0, 1.0)
    surface = lung.dome_y - rng.uniform(*EFFUSION_LEVEL_RANGE) - rng.uniform(*MENISCUS_RISE_RANGE) * lateral**2
    fluid = (chest.lung_levels[side] < 1.0) & (y > surface) & ~chest.mediastinum
    depth = np.clip((y - surface) / 0.12, 0.0, 1.0)  # fluid thickens with depth
    density += EFFUSION_DENSITY * (0.5 + 0.5 * depth) * fluid
    return fluid


def _plate_atelectasis(frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Plate-like atelectasis: a thin oblique band in the lower zone of the ``side`` lung."""
    x, y = frame.x, frame.y
    lung = chest.lungs[side]
    cx, cy = _sample_point_in_lung(lung, chest.heart, 0.05, rng)
    cy = max(cy, 0.5 * (lung.top + lung.dome_y))
    angle = np.deg2rad(rng.uniform(-25, 25))
    along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    across = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    length, thick = rng.uniform(0.14, 0.25), rng.uniform(0.022, 0.04)
    return (along / length) ** 2 + (across / thick) ** 2 < 1.0


def _wedge_atelectasis(frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Segmental atelectasis: a collapsed wedge, apex at the hilum, base on the pleura."""
    x, y = frame.x, frame.y
    apex_x, apex_y = side * 0.16 + chest.mediastinal_shift, rng.uniform(-0.15, 0.1)
    direction = np.deg2rad(rng.uniform(20, 70))  # downwards and outwards
    spread = np.deg2rad(rng.uniform(10, 18))
    angle = np.arctan2(y - apex_y, side * (x - apex_x))
    radius = np.hypot(x - apex_x, y - apex_y)
    return (np.abs(angle - direction) < spread) & (radius > 0.05)


def _add_atelectasis(
    density: np.ndarray, frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator
) -> np.ndarray:
    """A plate or wedge opacity in the ``side`` lung, in place (volume loss is in the layout); returns its mask."""
    shape_of = _plate_atelectasis if rng.random() < 0.5 else _wedge_atelectasis
    opacity = shape_of(frame, chest, side, rng) & (chest.lung_levels[side] < 1.0) & ~chest.mediastinum
    density += ATELECTASIS_DENSITY * opacity
    return opacity


def _add_sphere(
    density: np.ndarray, frame: _Frame, centre: tuple[float, float], radius: float, peak: float = NODULE_DENSITY
) -> np.ndarray:
    """A round opacity (a sphere's projected thickness, ``peak`` at its centre), in place; returns its disc."""
    cx, cy = centre
    r2 = ((frame.x - cx) ** 2 + (frame.y - cy) ** 2) / radius**2
    density += peak * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    return r2 < 1.0


def _add_nodules(
    density: np.ndarray, frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """One to three round opacities in the ``side`` lung, in place; returns their mask and NIH name."""
    lung = chest.lungs[side]
    is_mass = rng.random() < MASS_PROBABILITY
    count = 1 + rng.choice(len(NODULE_COUNT_PROBABILITIES), p=NODULE_COUNT_PROBABILITIES)
    mask = np.zeros_like(chest.lung_mask)
    largest = 0.0
    for index in range(count):
        radius_range = MASS_RADIUS_RANGE if is_mass and index == 0 else NODULE_RADIUS_RANGE
        radius = rng.uniform(*radius_range)
        largest = max(largest, radius)
        mask |= _add_sphere(density, frame, _sample_point_in_lung(lung, chest.heart, radius, rng), radius)
    diameter_mm = 2.0 * largest * frame.units_to_px * FIELD_OF_VIEW_MM / frame.size
    return mask, ("Mass" if diameter_mm > MASS_DIAMETER_MM else "Nodule")


def _add_mediastinum(density: np.ndarray, anatomy: PatientAnatomy, frame: _Frame, chest: _Chest) -> None:
    """Heart and spine over everything in the middle, in place."""
    density += HEART_EXTRA * chest.heart_mask
    spine = chest.ax < 0.045
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * frame.y / (0.55 * anatomy.rib_spacing))
    density += SPINE_EXTRA * anatomy.bone_density * spine * vertebrae


def _add_ribs_and_clavicles(density: np.ndarray, anatomy: PatientAnatomy, frame: _Frame, chest: _Chest) -> None:
    """Posterior and fainter anterior rib arcs over the rib cage, then the clavicles, in place."""
    a, x, y, ax = anatomy, frame.x, frame.y, chest.ax
    # Posterior arcs leave the spine and curve down; anterior ones slope down towards the midline.
    cage_edge = np.where(x < 0, -chest.lungs[-1].lateral_edge(), chest.lungs[1].lateral_edge()) + 0.05
    cage = (ax > 0.05) & (ax < cage_edge) & (y > a.lung_top - 0.08) & (y < a.dome_y + 0.1)
    posterior = np.cos(2.0 * np.pi * ((y - 0.55 * ax**2) / a.rib_spacing + a.rib_phase))
    anterior = np.cos(2.0 * np.pi * ((y + 0.45 * ax) / (1.3 * a.rib_spacing) + a.rib_phase))
    ribs = np.clip((posterior - 0.35) / 0.65, 0.0, 1.0) + 0.4 * np.clip((anterior - 0.55) / 0.45, 0.0, 1.0)
    density += RIB_EXTRA * a.bone_density * ribs * cage
    clavicle_y = a.lung_top + 0.02 - 0.22 * (ax - 0.1)
    clavicles = (np.abs(y - clavicle_y) < 0.028) & (ax > 0.06) & (ax < 0.5)
    density += RIB_EXTRA * a.bone_density * 1.3 * clavicles


def _add_abdomen(density: np.ndarray, frame: _Frame, chest: _Chest) -> None:
    """Below the diaphragm, in place: liver under the right dome, gastric air under the left."""
    x, y, lungs = frame.x, frame.y, chest.lungs
    below_left = (y > lungs[1].dome_y - 0.02) & (x > 0.15) & (x < 0.55)
    bubble = ((x - 0.35) / 0.12) ** 2 + ((y - lungs[1].dome_y - 0.09) / 0.06) ** 2 < 1.0
    density -= GASTRIC_AIR * (bubble & below_left)
    density += LIVER_EXTRA * ((y > lungs[-1].dome_y) & (x < 0) & (chest.body_profile > 0))


def _add_breasts(density: np.ndarray, anatomy: PatientAnatomy, frame: _Frame, chest: _Chest) -> None:
    """Breast shadows over the lower zones of a woman's film, in place."""
    if anatomy.sex == "F":
        y = frame.y
        breasts = ((chest.ax - 0.45) / 0.3) ** 2 + ((y - anatomy.dome_y + 0.05) / 0.22) ** 2 < 1.0
        density += BREAST_EXTRA * breasts * (y > anatomy.dome_y - 0.15)


def _expose(density: np.ndarray, anatomy: PatientAnatomy, frame: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Blur, then film response (brightness, contrast, heel gradient, gamma), quantum noise, 8 bits."""
    a, size = anatomy, frame.size
    sigma = max(0.6, size * BLUR_SIGMA_FRACTION)
    density = cv2.GaussianBlur(density.astype(np.float32), (0, 0), sigma)
    signal = 0.08 + 0.62 * a.contrast * density + a.exposure + a.heel_x * frame.px + a.heel_y * frame.py
    signal = np.clip(signal, 0.0, 1.0) ** a.gamma
    signal += a.noise * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(signal * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _render(label: int, anatomy: PatientAnatomy, rng: np.random.Generator, size: int):
    """Draw one film; returns (image, box, NIH finding name)."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES) - 1}], got {label}")
    frame = _frame(anatomy, size)
    side = rng.choice((-1, 1))  # hemithorax of a one-sided finding
    lungs, mediastinal_shift = _normal_lungs(anatomy), 0.0
    if label == ATELECTASIS:
        lungs, mediastinal_shift = _lose_volume(lungs, side, rng)
    chest = _chest(anatomy, frame, lungs, mediastinal_shift, cardiothoracic_ratio(label, anatomy))
    density = SOFT_TISSUE * np.sqrt(chest.body_profile)  # a cylinder's projected thickness
    collapsed_side = side if label == PNEUMOTHORAX else None
    finding_mask = _aerate_lungs(density, anatomy, frame, chest, collapsed_side, rng)  # pneumothorax rim or None
    finding_name = CLASS_NAMES[label]
    if label == EFFUSION:
        finding_mask = _add_effusion(density, frame, chest, side, rng)
    elif label == ATELECTASIS:
        finding_mask = _add_atelectasis(density, frame, chest, side, rng)
    elif label == NODULE_MASS:
        finding_mask, finding_name = _add_nodules(density, frame, chest, side, rng)
    elif label == CARDIOMEGALY:
        finding_mask = chest.heart_mask
    _add_mediastinum(density, anatomy, frame, chest)
    _add_ribs_and_clavicles(density, anatomy, frame, chest)
    _add_abdomen(density, frame, chest)
    _add_breasts(density, anatomy, frame, chest)
    image = _expose(density, anatomy, frame, rng)
    box = None if finding_mask is None else _box(finding_mask)
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


# --- 14-finding films -----------------------------------------------------------------------------
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


def _hyperinflated(anatomy: PatientAnatomy, rng: np.random.Generator) -> PatientAnatomy:
    """Emphysema's chest: larger lungs, flat low domes, horizontal ribs and a long narrow heart."""
    a = anatomy
    widest = max(a.lung_width, a.body_half_width - CHEST_WALL)
    return dataclasses.replace(
        a,
        lung_width=min(a.lung_width * rng.uniform(*EMPHYSEMA_WIDTH_GAIN), widest),
        lung_top=a.lung_top - rng.uniform(*EMPHYSEMA_APEX_RISE),
        dome_y=a.dome_y + rng.uniform(*EMPHYSEMA_DIAPHRAGM_DESCENT),
        dome_height=a.dome_height * rng.uniform(*EMPHYSEMA_DOME_KEPT),
        rib_spacing=a.rib_spacing * rng.uniform(*EMPHYSEMA_RIB_SPREAD),
        heart_ctr=a.heart_ctr * rng.uniform(*EMPHYSEMA_HEART_NARROWING),
    )


def _fibrotic(anatomy: PatientAnatomy, rng: np.random.Generator) -> PatientAnatomy:
    """Fibrosis' volume loss: lower apices, narrower lungs."""
    a = anatomy
    return dataclasses.replace(
        a,
        lung_top=a.lung_top + rng.uniform(*FIBROSIS_APEX_DESCENT),
        lung_width=a.lung_width * rng.uniform(*FIBROSIS_NARROWING),
    )


def _zone(lung: _Lung, y):
    """Height in the lung: 0 at the apex, 1 at the costophrenic angle."""
    return (y - lung.top) / (lung.dome_y - lung.top)


def _lung_region(chest: _Chest, side: int) -> np.ndarray:
    """The ``side`` lung's pixels off the mediastinum: where its signs may show."""
    return (chest.lung_levels[side] < 1.0) & ~chest.mediastinum


def _lobe(frame: _Frame, chest: _Chest, side: int, lobe: str, rng: np.random.Generator) -> np.ndarray:
    """The upper or lower part of the ``side`` lung, cut by a straight, slightly tilted fissure: the
    sharp edge that makes an opacity lobar."""
    lung = chest.lungs[side]
    lateral = np.clip((side * frame.x - lung.medial) / lung.width, 0.0, 1.0)
    level = lung.top + rng.uniform(*FISSURE_LEVEL_RANGE) * (lung.dome_y - lung.top)
    below = frame.y > level + rng.uniform(*FISSURE_TILT_RANGE) * (lateral - 0.5)
    return _lung_region(chest, side) & (below if lobe == "lower" else ~below)


def _air_bronchograms(frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Lucent lines fanning out from the ``side`` hilum (0..1): bronchi still aerated in airless lung."""
    lung = chest.lungs[side]
    hilum_x, hilum_y = side * (lung.medial + 0.05), lung.top + 0.5 * (lung.dome_y - lung.top)
    angle = np.arctan2(frame.y - hilum_y, side * (frame.x - hilum_x))
    distance = np.hypot(frame.x - hilum_x, frame.y - hilum_y)
    count = rng.integers(*BRONCHUS_COUNT_RANGE, endpoint=True)
    bronchi = np.clip((np.cos(count * angle + rng.uniform(0.0, 2.0 * np.pi)) - 0.75) / 0.25, 0.0, 1.0)
    near, far = BRONCHUS_REACH
    return bronchi * ((distance > near) & (distance < far))


def _add_round_opacities(
    density: np.ndarray,
    frame: _Frame,
    chest: _Chest,
    side: int,
    diameters_mm,
    peak: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Spheres of the given diameters in the ``side`` lung, in place; returns their discs."""
    mask = np.zeros_like(chest.lung_mask)
    for diameter in diameters_mm:
        radius = diameter * frame.size / (2.0 * FIELD_OF_VIEW_MM * frame.units_to_px)
        centre = _sample_point_in_lung(chest.lungs[side], chest.heart, radius, rng)
        mask |= _add_sphere(density, frame, centre, radius, peak)
    return mask


def _add_infiltration(
    density: np.ndarray, frame: _Frame, chest: _Chest, sides: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Faint, ill-defined patches scattered over the mid and lower zones, in place; returns where they show."""
    patches = np.clip((_smooth_noise(rng, INFILTRATION_CELLS, frame.size) - 0.2) / 0.8, 0.0, 1.0)
    mask = np.zeros_like(chest.lung_mask)
    for side in sides:
        weight = np.clip((_zone(chest.lungs[side], frame.y) - 0.25) / 0.2, 0.0, 1.0)
        shown = patches * weight * _lung_region(chest, side)
        density += INFILTRATION_DENSITY * shown
        mask |= shown > 0.1
    return mask


def _add_pneumonia(
    density: np.ndarray, frame: _Frame, chest: _Chest, slot: tuple[int, str], rng: np.random.Generator
) -> np.ndarray:
    """A mottled airspace patch with air bronchograms in one zone, often up to a fissure, in place;
    returns its region."""
    side, lobe = slot
    lung = chest.lungs[side]
    lobe_region = _lobe(frame, chest, side, lobe, rng)
    zone = rng.uniform(0.2, 0.4) if lobe == "upper" else rng.uniform(0.6, 0.8)
    cx = side * (lung.medial + rng.uniform(0.35, 0.7) * lung.width)
    cy = lung.top + zone * (lung.dome_y - lung.top)
    radius = rng.uniform(*PNEUMONIA_RADIUS_RANGE)
    spread = np.clip(1.0 - ((frame.x - cx) ** 2 + ((frame.y - cy) / 1.2) ** 2) / radius**2, 0.0, 1.0)
    bounded = lobe_region if rng.random() < PNEUMONIA_LOBAR_PROBABILITY else _lung_region(chest, side)
    region = (spread > 0.0) & bounded
    mottle = np.clip(0.7 + 0.5 * _smooth_noise(rng, PNEUMONIA_CELLS, frame.size), 0.0, 1.0)
    airless = mottle * np.sqrt(spread) * region
    density += airless * (PNEUMONIA_DENSITY - BRONCHOGRAM_AIR * _air_bronchograms(frame, chest, side, rng))
    return region


def _add_consolidation(
    density: np.ndarray, frame: _Frame, chest: _Chest, slot: tuple[int, str], rng: np.random.Generator
) -> np.ndarray:
    """A dense, homogeneous lobe (or a segment of it) with air bronchograms, in place; returns its region."""
    side, lobe = slot
    region = _lobe(frame, chest, side, lobe, rng)
    if region.any() and rng.random() < SEGMENT_PROBABILITY:
        rows, cols = np.nonzero(region)
        pick = rng.integers(rows.size)
        cx, cy = frame.x[rows[pick], cols[pick]], frame.y[rows[pick], cols[pick]]
        region &= (frame.x - cx) ** 2 + (frame.y - cy) ** 2 < rng.uniform(*SEGMENT_RADIUS_RANGE) ** 2
    density += region * (CONSOLIDATION_DENSITY - BRONCHOGRAM_AIR * _air_bronchograms(frame, chest, side, rng))
    return region


def _add_edema(density: np.ndarray, frame: _Frame, chest: _Chest, rng: np.random.Generator) -> np.ndarray:
    """Symmetric perihilar haze ("bat wings") and septal (Kerley B) lines at both bases, in place;
    returns where the haze is thick and the lines."""
    x, y = frame.x, frame.y
    peak, reach = rng.uniform(*EDEMA_DENSITY_RANGE), rng.uniform(*EDEMA_REACH_RANGE)
    length = rng.uniform(*KERLEY_LENGTH_RANGE)
    lines = np.abs((y - rng.uniform(0.0, KERLEY_SPACING)) % KERLEY_SPACING - KERLEY_SPACING / 2) < KERLEY_THICKNESS / 2
    mask = np.zeros_like(chest.lung_mask)
    for side, lung in chest.lungs.items():
        region = _lung_region(chest, side)
        hilum_x, hilum_y = side * (lung.medial + 0.15 * lung.width), lung.top + 0.5 * (lung.dome_y - lung.top)
        haze = np.exp(-(((x - hilum_x) / reach) ** 2 + ((y - hilum_y) / (1.4 * reach)) ** 2))
        septal = region & lines & (lung.lateral_depth(x, y) < length) & (_zone(lung, y) > 0.6)
        density += peak * haze * region + KERLEY_DENSITY * septal
        mask |= (region & (haze > EDEMA_BOX_LEVEL)) | septal
    return mask


def _add_reticulation(density: np.ndarray, frame: _Frame, chest: _Chest, rng: np.random.Generator) -> np.ndarray:
    """Fibrosis' network of fine lines, fading from the apices down, in place; returns the zones it covers."""
    ridges = np.exp(-((_smooth_noise(rng, FIBROSIS_CELLS, frame.size) / FIBROSIS_LINE_WIDTH) ** 2))
    full, none = FIBROSIS_UPPER_ZONE
    mask = np.zeros_like(chest.lung_mask)
    for side, lung in chest.lungs.items():
        weight = np.clip((none - _zone(lung, frame.y)) / (none - full), 0.0, 1.0)
        region = _lung_region(chest, side) & (weight > 0.0)
        density += FIBROSIS_DENSITY * ridges * weight * region
        mask |= region
    return mask


def _add_pleural_thickening(
    density: np.ndarray, frame: _Frame, chest: _Chest, sides: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """A soft-tissue rind inside the lateral chest wall, thickest over the apex (apical cap), in place;
    returns the rind. It stops above the domes, which a rind does not follow here."""
    mask = np.zeros_like(chest.lung_mask)
    for side in sides:
        lung = chest.lungs[side]
        inner = dataclasses.replace(
            lung, width=lung.width - rng.uniform(*PLEURAL_RIND_RANGE), top=lung.top + rng.uniform(*APICAL_CAP_RANGE)
        )
        rind = _lung_region(chest, side) & (inner.level(frame.x, frame.y) >= 1.0) & (_zone(lung, frame.y) < 0.85)
        density += PLEURAL_RIND_DENSITY * rind
        mask |= rind
    return mask


def _add_hernia(density: np.ndarray, frame: _Frame, chest: _Chest, rng: np.random.Generator) -> np.ndarray:
    """A hiatal hernia: a gas-filled sac with an air-fluid level just above the diaphragm, behind the
    heart, in place; returns the sac."""
    radius = rng.uniform(*HERNIA_RADIUS_RANGE)
    cx = chest.mediastinal_shift + rng.uniform(-0.03, 0.06)
    cy = chest.lungs[1].dome_y - rng.uniform(0.7, 1.2) * radius
    r2 = ((frame.x - cx) / radius) ** 2 + ((frame.y - cy) / (0.8 * radius)) ** 2
    sac = r2 < 1.0
    gas = sac & (frame.y < cy + rng.uniform(*HERNIA_FLUID_LEVEL_RANGE) * radius)
    density += HERNIA_WALL * (sac & (r2 > 0.7)) - HERNIA_GAS * gas
    return sac


def _render_findings(
    findings: frozenset[str], anatomy: PatientAnatomy, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one film with every finding's sign; returns the image and each finding's pixel mask."""
    depth = rng.uniform(-1.0, 1.0)  # of inspiration
    air_gain, markings_gain = 1.0 + INSPIRATION_AIR * depth, rng.uniform(*MARKINGS_GAIN_RANGE)
    anatomy = dataclasses.replace(anatomy, dome_y=anatomy.dome_y + INSPIRATION_DESCENT * depth)
    place = _place(findings, rng)
    if "Emphysema" in findings:
        anatomy = _hyperinflated(anatomy, rng)
    if "Fibrosis" in findings:
        anatomy = _fibrotic(anatomy, rng)
    frame = _frame(anatomy, size)
    lungs, mediastinal_shift = _normal_lungs(anatomy), 0.0
    if "Atelectasis" in findings:
        lungs, mediastinal_shift = _lose_volume(lungs, place.sides["Atelectasis"][0], rng)
    ctr = anatomy.enlarged_ctr if "Cardiomegaly" in findings else anatomy.heart_ctr
    chest = _chest(anatomy, frame, lungs, mediastinal_shift, ctr)
    density = SOFT_TISSUE * np.sqrt(chest.body_profile)
    collapsed_side = place.sides["Pneumothorax"][0] if "Pneumothorax" in findings else None
    if "Emphysema" in findings:  # hyperlucent: more air, fewer vessels
        air_gain, markings_gain = air_gain * EMPHYSEMA_AIR_GAIN, markings_gain * EMPHYSEMA_MARKINGS_KEPT
    rim = _aerate_lungs(density, anatomy, frame, chest, collapsed_side, rng, air_gain, markings_gain)
    masks = {}
    if rim is not None:
        masks["Pneumothorax"] = rim
    if "Cardiomegaly" in findings:
        masks["Cardiomegaly"] = chest.heart_mask
    if "Emphysema" in findings:
        masks["Emphysema"] = chest.lung_mask
    if "Atelectasis" in findings:
        masks["Atelectasis"] = _add_atelectasis(density, frame, chest, place.sides["Atelectasis"][0], rng)
    if "Effusion" in findings:
        masks["Effusion"] = _add_effusion(density, frame, chest, place.sides["Effusion"][0], rng)
    if "Infiltration" in findings:
        masks["Infiltration"] = _add_infiltration(density, frame, chest, place.sides["Infiltration"], rng)
    if "Mass" in findings:
        diameters = (rng.uniform(*MASS_DIAMETER_RANGE_MM),)
        masks["Mass"] = _add_round_opacities(
            density, frame, chest, place.sides["Mass"][0], diameters, NODULE_DENSITY, rng
        )
    if "Nodule" in findings:
        count = 1 + rng.choice(len(NODULE_COUNT_PROBABILITIES), p=NODULE_COUNT_PROBABILITIES)
        diameters = rng.uniform(*NODULE_DIAMETER_RANGE_MM, size=count)
        side = place.sides["Nodule"][0]
        masks["Nodule"] = _add_round_opacities(density, frame, chest, side, diameters, SMALL_NODULE_DENSITY, rng)
    if "Pneumonia" in findings:
        masks["Pneumonia"] = _add_pneumonia(density, frame, chest, place.lobes["Pneumonia"], rng)
    if "Consolidation" in findings:
        masks["Consolidation"] = _add_consolidation(density, frame, chest, place.lobes["Consolidation"], rng)
    if "Edema" in findings:
        masks["Edema"] = _add_edema(density, frame, chest, rng)
    if "Fibrosis" in findings:
        masks["Fibrosis"] = _add_reticulation(density, frame, chest, rng)
    if "Pleural_Thickening" in findings:
        masks["Pleural_Thickening"] = _add_pleural_thickening(
            density, frame, chest, place.sides["Pleural_Thickening"], rng
        )
    if "Hernia" in findings:
        masks["Hernia"] = _add_hernia(density, frame, chest, rng)
    _add_mediastinum(density, anatomy, frame, chest)
    _add_ribs_and_clavicles(density, anatomy, frame, chest)
    _add_abdomen(density, frame, chest)
    _add_breasts(density, anatomy, frame, chest)
    return _expose(density, anatomy, frame, rng), masks


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
        boxes = {name: _box(masks[name]) for name in FINDINGS14 if name in masks}
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

    def draw(self, rng: np.random.Generator) -> int:
        """Index of a combination, in NIH's proportions."""
        return int(rng.choice(len(self.findings), p=self.images / self.images.sum()))


@functools.cache
def finding_combinations() -> FindingCombinations:
    """The table shipped with the package, read once per process (through importlib.resources, so it
    is found in an installed wheel as well as in a checkout)."""
    text = importlib.resources.files(__package__).joinpath(COMBINATIONS_FILE).read_text(encoding="ascii")
    rows = [line.split(",") for line in text.splitlines()[1:]]
    return FindingCombinations(
        findings=tuple(() if names == labels.NO_FINDING else tuple(names.split("|")) for names, _, _ in rows),
        images=np.array([int(images) for _, images, _ in rows], np.int64),
        pa_images=np.array([int(pa) for _, _, pa in rows], np.int64),
    )


@dataclasses.dataclass(frozen=True)
class _FilmRecord:
    """One written film: its Data_Entry row and a box row per boxed finding."""

    entry: str
    boxes: tuple[str, ...]


def _six_class_films(
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


def _full14_films(
    anatomy: PatientAnatomy, count: int, rng: np.random.Generator, size: int
) -> Iterator[tuple[str, str, np.ndarray, dict]]:
    """(view, Finding Labels, image, boxes) per film: one of NIH's combinations, kept on follow-ups as
    the six-class films keep their class, and the view NIH shows that combination in."""
    table = finding_combinations()
    index = table.draw(rng)
    for follow_up in range(count):
        if follow_up and rng.random() >= REPEAT_FINDING_PROBABILITY:
            index = table.draw(rng)
        findings = table.findings[index]
        view = "PA" if rng.random() < table.pa_images[index] / table.images[index] else "AP"
        image, boxes = render_findings(findings, jitter_anatomy(anatomy, rng), rng, size)
        boxed = {name: box for name, box in boxes.items() if name in labels.BOXED_FINDINGS}
        yield view, "|".join(findings) or labels.NO_FINDING, image, boxed


_FILMS = {"six_class": _six_class_films, "full14": _full14_films}  # per task in tasks.TASKS


def _patient_films(
    patient_id: int,
    seed: int,
    image_size: int,
    films_per_patient: tuple[int, int],
    image_dir: str,
    task: str,
) -> list[_FilmRecord]:
    """Render and write one patient's films; its own seed makes the result worker-independent."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient_id]))
    anatomy = sample_anatomy(rng)
    count = int(rng.integers(films_per_patient[0], films_per_patient[1] + 1))
    spacing = FIELD_OF_VIEW_MM / image_size
    age = anatomy.age
    records = []
    for follow_up, (view, finding_labels, image, boxes) in enumerate(_FILMS[task](anatomy, count, rng, image_size)):
        name = f"{patient_id:08d}_{follow_up:03d}.png"
        if not cv2.imwrite(os.path.join(image_dir, name), image):
            raise OSError(f"could not write {os.path.join(image_dir, name)}")
        entry = (
            f"{name},{finding_labels},{follow_up},{patient_id},{age},{anatomy.sex},{view},"
            f"{image_size},{image_size},{spacing!r},{spacing!r}"
        )
        rows = tuple(
            ",".join([name, labels.BOX_LIST_NAMES.get(finding, finding), *(repr(v) for v in box)])
            for finding, box in boxes.items()
        )
        records.append(_FilmRecord(entry, rows))
        age += int(rng.random() < 0.3)  # follow-ups span months to years
    return records


def write_nih_tree(
    root: str | os.PathLike,
    num_patients: int,
    *,
    seed: int = 0,
    image_size: int = 256,
    films_per_patient: tuple[int, int] = (1, 5),
    num_workers: int = 1,
    progress: bool = False,
    task: str = "six_class",
) -> pathlib.Path:
    """Write phantom films as an NIH ChestX-ray14 tree, so the real builder runs on them unchanged.

    Creates ``Data_Entry_2017.csv``, ``BBox_List_2017.csv`` and
    ``images_001/images/<patient>_<follow-up>.png``. ``task`` (a name in ``tasks.TASKS``) decides the
    films: "six_class" draws one finding per film in the reference subset's proportions;
    "full14" draws NIH's own finding combinations (several findings on a film, No Finding on about
    half) with a box row per boxed finding. The output is byte-identical for a seed whatever
    ``num_workers`` is. Workers are spawned, never forked, because the parent may hold JAX's threads.
    """
    if not isinstance(num_patients, int) or num_patients < 1:
        raise ValueError(f"num_patients must be an integer >= 1, got {num_patients!r}")
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size!r}")
    low, high = films_per_patient
    if not 1 <= low <= high:
        raise ValueError(f"films_per_patient must be (low, high) with 1 <= low <= high, got {films_per_patient!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
    tasks.get(task)  # names the known tasks when it is not one

    root = pathlib.Path(root)
    image_dir = root / IMAGE_SUBDIR
    image_dir.mkdir(parents=True, exist_ok=True)
    patient_ids = range(1, num_patients + 1)
    job = (seed, image_size, (low, high), str(image_dir), task)
    with workers.process_pool(num_workers) as executor:
        if executor is None:
            results = (_patient_films(pid, *job) for pid in patient_ids)
        else:
            chunk = max(1, num_patients // (8 * num_workers))
            results = executor.map(_patient_films, patient_ids, *([arg] * num_patients for arg in job), chunksize=chunk)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=num_patients, desc="phantom patients", unit="patient")
        records = [record for patient in results for record in patient]

    entries = [DATA_ENTRY_HEADER, *(r.entry for r in records)]
    boxes = [BBOX_HEADER, *(row for r in records for row in r.boxes)]
    (root / DATA_ENTRY_FILE).write_text("\n".join(entries) + "\n", encoding="ascii")
    (root / BBOX_FILE).write_text("\n".join(boxes) + "\n", encoding="ascii")
    return root
