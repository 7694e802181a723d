"""Patients and the normal chest: the anatomy every phantom film is drawn on, whatever its findings.

Geometry lives in "anatomical units": the field of view spans [-1, 1] on both axes before the
patient's zoom, offset and rotation are applied; x grows towards the image right (the patient's
left, radiological convention) and y grows downwards. Densities are unitless attenuation values
that are blurred, windowed and quantised to 8 bits at the end (``expose``).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

# A follow-up film repeats the previous film's class this often (the rest redraw from the
# proportions, so the marginal frequencies are unchanged); it makes patient leakage matter.
REPEAT_FINDING_PROBABILITY = 0.5
MALE_PROBABILITY = 0.56  # NIH: 56% of images are of men
AGE_MEAN, AGE_STD, AGE_RANGE = 47.0, 17.0, (2, 92)

# --- physical scale --------------------------------------------------------------------------
FIELD_OF_VIEW_MM = 430.0  # detector width; an anatomical unit is half of it at zoom 1

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
BLUR_SIGMA_FRACTION = 1.0 / 160.0  # softness of every edge, as a fraction of the image size

# --- normal geometry ------------------------------------------------------------------------
NORMAL_CTR_RANGE = (0.36, 0.48)
ENLARGED_CTR_RANGE = (0.54, 0.64)
MIN_BOX_PIXELS = 2


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


@dataclasses.dataclass(frozen=True)
class Lung:
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


def smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A band-limited random field, cheap: upsample a coarse grid."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def bounding_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
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


@dataclasses.dataclass(frozen=True)
class Frame:
    """One film's pixel grid: detector coordinates (px, py) and the patient's anatomical ones (x, y)."""

    size: int
    px: np.ndarray
    py: np.ndarray
    x: np.ndarray
    y: np.ndarray
    units_to_px: float


@dataclasses.dataclass(frozen=True)
class Chest:
    """The thorax laid out on one film: the shapes and masks that every finding is placed against."""

    lungs: dict[int, Lung]
    lung_levels: dict[int, np.ndarray]
    lung_mask: np.ndarray
    mediastinal_shift: float
    heart: tuple[float, float, float, float]
    heart_mask: np.ndarray
    mediastinum: np.ndarray
    ax: np.ndarray  # distance from the (shifted) midline
    body_profile: np.ndarray


def make_frame(anatomy: PatientAnatomy, size: int) -> Frame:
    """Pixel centres in [-1, 1], mapped through the patient's offset, rotation and zoom."""
    a = anatomy
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    px, py = np.meshgrid(axis, axis)
    theta = np.deg2rad(a.rotation_deg)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = px - a.offset_x, py - a.offset_y
    x = (c * dx + s * dy) / a.zoom
    y = (-s * dx + c * dy) / a.zoom
    return Frame(size, px, py, x, y, units_to_px=a.zoom * size / 2.0)


def normal_lungs(anatomy: PatientAnatomy) -> dict[int, Lung]:
    """Both hemithoraces of this anatomy, keyed by side; the right dome sits higher."""
    a = anatomy
    return {
        lung_side: Lung(lung_side, 0.1, a.lung_width, a.lung_top, a.dome_y + dome_offset, a.dome_height)
        for lung_side, dome_offset in ((-1, -0.03), (1, 0.0))
    }


def _heart_ellipse(
    ctr: float, anatomy: PatientAnatomy, lungs: dict[int, Lung], mediastinal_shift: float
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


def lay_out_chest(
    anatomy: PatientAnatomy, frame: Frame, lungs: dict[int, Lung], mediastinal_shift: float, ctr: float
) -> Chest:
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
    return Chest(lungs, lung_levels, lung_mask, mediastinal_shift, heart, heart_mask, mediastinum, ax, body_profile)


def lung_markings(anatomy: PatientAnatomy, frame: Frame, chest: Chest) -> np.ndarray:
    """Vessel-like ridges from the patient's own texture, densest at the hila."""
    texture_rng = np.random.default_rng(anatomy.texture_seed)
    field = smooth_noise(texture_rng, 14, frame.size)
    vessels = np.exp(-((field / 0.35) ** 2))
    hilar = np.exp(-(((chest.ax - 0.2) / 0.35) ** 2 + ((frame.y + 0.05) / 0.45) ** 2))
    return LUNG_MARKINGS * vessels * (0.35 + hilar)


def add_mediastinum(density: np.ndarray, anatomy: PatientAnatomy, frame: Frame, chest: Chest) -> None:
    """Heart and spine over everything in the middle, in place."""
    density += HEART_EXTRA * chest.heart_mask
    spine = chest.ax < 0.045
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * frame.y / (0.55 * anatomy.rib_spacing))
    density += SPINE_EXTRA * anatomy.bone_density * spine * vertebrae


def add_ribs_and_clavicles(density: np.ndarray, anatomy: PatientAnatomy, frame: Frame, chest: Chest) -> None:
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


def add_abdomen(density: np.ndarray, frame: Frame, chest: Chest) -> None:
    """Below the diaphragm, in place: liver under the right dome, gastric air under the left."""
    x, y, lungs = frame.x, frame.y, chest.lungs
    below_left = (y > lungs[1].dome_y - 0.02) & (x > 0.15) & (x < 0.55)
    bubble = ((x - 0.35) / 0.12) ** 2 + ((y - lungs[1].dome_y - 0.09) / 0.06) ** 2 < 1.0
    density -= GASTRIC_AIR * (bubble & below_left)
    density += LIVER_EXTRA * ((y > lungs[-1].dome_y) & (x < 0) & (chest.body_profile > 0))


def add_breasts(density: np.ndarray, anatomy: PatientAnatomy, frame: Frame, chest: Chest) -> None:
    """Breast shadows over the lower zones of a woman's film, in place."""
    if anatomy.sex == "F":
        y = frame.y
        breasts = ((chest.ax - 0.45) / 0.3) ** 2 + ((y - anatomy.dome_y + 0.05) / 0.22) ** 2 < 1.0
        density += BREAST_EXTRA * breasts * (y > anatomy.dome_y - 0.15)


def expose(density: np.ndarray, anatomy: PatientAnatomy, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Blur, then film response (brightness, contrast, heel gradient, gamma), quantum noise, 8 bits."""
    a, size = anatomy, frame.size
    sigma = max(0.6, size * BLUR_SIGMA_FRACTION)
    density = cv2.GaussianBlur(density.astype(np.float32), (0, 0), sigma)
    signal = 0.08 + 0.62 * a.contrast * density + a.exposure + a.heel_x * frame.px + a.heel_y * frame.py
    signal = np.clip(signal, 0.0, 1.0) ** a.gamma
    signal += a.noise * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(signal * 255.0 + 0.5, 0, 255).astype(np.uint8)
