"""Procedural chest radiographs ("phantoms") and an NIH-format tree writer.

The NIH images cannot be downloaded here, so everything that touches pixels is exercised on
phantoms. Each finding is drawn from the radiological sign a reader would use (cardiothoracic ratio,
meniscus, pleural line, volume loss, round opacity), so a model has something real to learn, while
patient-level variation (size, position, rotation, exposure, noise) keeps the classes from being
separable by a linear model on raw pixels.

Geometry lives in "anatomical units": the field of view spans [-1, 1] on both axes before the
patient's zoom, offset and rotation are applied; x grows towards the image right (the patient's
left, radiological convention) and y grows downwards. Densities are unitless attenuation values
that are blurred, windowed and quantised to 8 bits at the end.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import cv2
import numpy as np

from lungjax.data import workers
from lungjax.data.labels import CLASS_NAMES

# --- NIH file format -------------------------------------------------------------------------
DATA_ENTRY_FILE = "Data_Entry_2017.csv"
BBOX_FILE = "BBox_List_2017.csv"
IMAGE_SUBDIR = pathlib.Path("images_001") / "images"
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

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


def _hemithoraces(
    label: int, anatomy: PatientAnatomy, side: int, rng: np.random.Generator
) -> tuple[dict[int, _Lung], float]:
    """Both lungs and the mediastinal shift; atelectasis shows volume loss on ``side``."""
    a = anatomy
    mediastinal_shift = 0.0
    lungs = {}
    for lung_side, dome_offset in ((-1, -0.03), (1, 0.0)):  # the right dome sits higher
        lungs[lung_side] = _Lung(lung_side, 0.1, a.lung_width, a.lung_top, a.dome_y + dome_offset, a.dome_height)
    if label == ATELECTASIS:  # volume loss: raised hemidiaphragm, smaller lung, shifted heart
        lost = lungs[side]
        lungs[side] = dataclasses.replace(
            lost,
            width=lost.width * rng.uniform(*VOLUME_LOSS_NARROWING),
            dome_y=lost.dome_y - rng.uniform(*VOLUME_LOSS_ELEVATION),
        )
        mediastinal_shift = side * rng.uniform(0.015, 0.035)
    return lungs, mediastinal_shift


def _heart_ellipse(
    label: int, anatomy: PatientAnatomy, lungs: dict[int, _Lung], mediastinal_shift: float
) -> tuple[float, float, float, float]:
    """Heart (x, y, half-width, half-height): CTR x thoracic width, a third right of the midline."""
    thoracic_width = lungs[1].lateral_edge() - lungs[-1].lateral_edge()
    heart_width = cardiothoracic_ratio(label, anatomy) * thoracic_width
    heart_half_height = anatomy.heart_half_height
    return (
        heart_width / 6.0 + mediastinal_shift,
        anatomy.dome_y + 0.04 - 0.85 * heart_half_height,  # its base hides behind the diaphragm
        heart_width / 2.0,
        heart_half_height,
    )


def _chest(label: int, anatomy: PatientAnatomy, frame: _Frame, side: int, rng: np.random.Generator) -> _Chest:
    """Lay out body outline, lungs, heart and mediastinum on the film's pixels."""
    x, y = frame.x, frame.y
    lungs, mediastinal_shift = _hemithoraces(label, anatomy, side, rng)
    heart = _heart_ellipse(label, anatomy, lungs, mediastinal_shift)
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
) -> np.ndarray | None:
    """Subtract the lungs' air and add their markings in place; returns a pneumothorax's rim, if any."""
    markings = _lung_markings(anatomy, frame, chest)
    aerated = chest.lung_mask.astype(np.float32)
    lung_air = LUNG_AIR * aerated
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


def _add_nodules(
    density: np.ndarray, frame: _Frame, chest: _Chest, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """One to three round opacities in the ``side`` lung, in place; returns their mask and NIH name."""
    x, y = frame.x, frame.y
    lung = chest.lungs[side]
    is_mass = rng.random() < MASS_PROBABILITY
    count = 1 + rng.choice(len(NODULE_COUNT_PROBABILITIES), p=NODULE_COUNT_PROBABILITIES)
    mask = np.zeros_like(chest.lung_mask)
    largest = 0.0
    for index in range(count):
        radius_range = MASS_RADIUS_RANGE if is_mass and index == 0 else NODULE_RADIUS_RANGE
        radius = rng.uniform(*radius_range)
        largest = max(largest, radius)
        cx, cy = _sample_point_in_lung(lung, chest.heart, radius, rng)
        r2 = ((x - cx) ** 2 + (y - cy) ** 2) / radius**2
        density += NODULE_DENSITY * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))  # a sphere
        mask |= r2 < 1.0
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
    chest = _chest(label, anatomy, frame, side, rng)
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


@dataclasses.dataclass(frozen=True)
class _FilmRecord:
    """One written film: its Data_Entry row and, for a finding, its box row."""

    entry: str
    bbox: str | None


def _patient_films(
    patient_id: int,
    seed: int,
    image_size: int,
    films_per_patient: tuple[int, int],
    image_dir: str,
) -> list[_FilmRecord]:
    """Render and write one patient's films; its own seed makes the result worker-independent."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient_id]))
    anatomy = sample_anatomy(rng)
    count = int(rng.integers(films_per_patient[0], films_per_patient[1] + 1))
    spacing = FIELD_OF_VIEW_MM / image_size
    view = "PA" if rng.random() < PA_VIEW_PROBABILITY else "AP"
    age = anatomy.age
    label = int(rng.choice(len(CLASS_NAMES), p=CLASS_PROBABILITIES))
    records = []
    for follow_up in range(count):
        if follow_up and rng.random() >= REPEAT_FINDING_PROBABILITY:
            label = int(rng.choice(len(CLASS_NAMES), p=CLASS_PROBABILITIES))
        image, box, finding = _render(label, jitter_anatomy(anatomy, rng), rng, image_size)
        name = f"{patient_id:08d}_{follow_up:03d}.png"
        if not cv2.imwrite(os.path.join(image_dir, name), image):
            raise OSError(f"could not write {os.path.join(image_dir, name)}")
        entry = (
            f"{name},{finding},{follow_up},{patient_id},{age},{anatomy.sex},{view},"
            f"{image_size},{image_size},{spacing!r},{spacing!r}"
        )
        bbox = None if box is None else ",".join([name, finding, *(repr(v) for v in box)])
        records.append(_FilmRecord(entry, bbox))
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
) -> pathlib.Path:
    """Write phantom films as an NIH ChestX-ray14 tree, so the real builder runs on them unchanged.

    Creates ``Data_Entry_2017.csv``, ``BBox_List_2017.csv`` and
    ``images_001/images/<patient>_<follow-up>.png``. Classes follow the reference subset's
    proportions; the output is byte-identical for a seed whatever ``num_workers`` is. Workers are
    spawned, never forked, because the parent may hold JAX's threads.
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

    root = pathlib.Path(root)
    image_dir = root / IMAGE_SUBDIR
    image_dir.mkdir(parents=True, exist_ok=True)
    patient_ids = range(1, num_patients + 1)
    job = (seed, image_size, (low, high), str(image_dir))
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
    boxes = [BBOX_HEADER, *(r.bbox for r in records if r.bbox is not None)]
    (root / DATA_ENTRY_FILE).write_text("\n".join(entries) + "\n", encoding="ascii")
    (root / BBOX_FILE).write_text("\n".join(boxes) + "\n", encoding="ascii")
    return root
