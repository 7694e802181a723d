"""The findings' radiological signs, each drawn onto a film's density in place.

A sign is what a reader would use: meniscus, pleural line, volume loss, round opacity, and for the
14 findings also lobar opacities with air bronchograms, perihilar haze with septal lines,
hyperinflation, reticulation, a pleural rind and a retrocardiac gas sac. Cardiomegaly needs nothing
here: its sign is the heart ``anatomy.lay_out_chest`` draws at the film's cardiothoracic ratio.
Lengths and densities are in the units of :mod:`lungjax.data.phantom.anatomy`.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from lungjax.data.phantom.anatomy import (
    FIELD_OF_VIEW_MM,
    LUNG_AIR,
    Chest,
    Frame,
    Lung,
    PatientAnatomy,
    lung_markings,
    smooth_noise,
)

MASS_DIAMETER_MM = 30.0  # NIH/Fleischner: a round opacity over 3 cm is a mass, else a nodule

# --- densities (unitless attenuation) --------------------------------------------------------
PLEURAL_LINE_EXTRA = 0.32
PNEUMOTHORAX_AIR = 0.16  # extra lucency where the lung has pulled away from the chest wall
EFFUSION_DENSITY = 0.55  # fluid adds most of the soft tissue back
ATELECTASIS_DENSITY = 0.4
NODULE_DENSITY = 0.45

# --- finding geometry ------------------------------------------------------------------------
NODULE_RADIUS_RANGE = (0.035, 0.075)  # anatomical units: ~15-32 mm diameter at zoom 1
MASS_RADIUS_RANGE = (0.075, 0.13)
MASS_PROBABILITY = 0.45  # NIH: 2,139 Mass vs 2,705 Nodule single-label images
NODULE_COUNT_PROBABILITIES = (0.65, 0.25, 0.10)  # one, two or three opacities
PNEUMOTHORAX_COLLAPSE_RANGE = (0.8, 0.92)  # collapsed lung size relative to the hemithorax
EFFUSION_LEVEL_RANGE = (0.06, 0.45)  # height of the fluid above the costophrenic angle
MENISCUS_RISE_RANGE = (0.06, 0.16)  # how far the fluid climbs the lateral chest wall
VOLUME_LOSS_ELEVATION = (0.04, 0.09)  # raised hemidiaphragm in atelectasis
VOLUME_LOSS_NARROWING = (0.92, 0.97)
MAX_PLACEMENT_TRIES = 200

# --- the 14-finding signs (anatomical units and densities, as above) ----------------------------
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
HERNIA_RADIUS_RANGE = (0.08, 0.12)
HERNIA_GAS = 0.4  # bowel gas above the diaphragm, behind the heart
HERNIA_WALL = 0.1
HERNIA_FLUID_LEVEL_RANGE = (-0.2, 0.4)  # air-fluid level below the centre, in radii


def sample_point_in_lung(lung: Lung, heart, radius: float, rng: np.random.Generator):
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


def lose_volume(lungs: dict[int, Lung], side: int, rng: np.random.Generator) -> tuple[dict[int, Lung], float]:
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


def _pneumothorax_signs(
    frame: Frame, chest: Chest, side: int, rng: np.random.Generator
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


def aerate_lungs(
    density: np.ndarray,
    anatomy: PatientAnatomy,
    frame: Frame,
    chest: Chest,
    collapsed_side: int | None,
    rng: np.random.Generator,
    air_gain: float = 1.0,
    markings_gain: float = 1.0,
) -> np.ndarray | None:
    """Subtract the lungs' air (``air_gain`` x LUNG_AIR) and add their markings in place; returns a
    pneumothorax's rim, if any."""
    markings = markings_gain * lung_markings(anatomy, frame, chest)
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


def add_effusion(density: np.ndarray, frame: Frame, chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Fluid with a meniscus in the base of the ``side`` lung, in place; returns its mask."""
    x, y = frame.x, frame.y
    lung = chest.lungs[side]
    lateral = np.clip((side * x - lung.medial) / lung.width, 0.0, 1.0)
    surface = lung.dome_y - rng.uniform(*EFFUSION_LEVEL_RANGE) - rng.uniform(*MENISCUS_RISE_RANGE) * lateral**2
    fluid = (chest.lung_levels[side] < 1.0) & (y > surface) & ~chest.mediastinum
    depth = np.clip((y - surface) / 0.12, 0.0, 1.0)  # fluid thickens with depth
    density += EFFUSION_DENSITY * (0.5 + 0.5 * depth) * fluid
    return fluid


def _plate_atelectasis(frame: Frame, chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Plate-like atelectasis: a thin oblique band in the lower zone of the ``side`` lung."""
    x, y = frame.x, frame.y
    lung = chest.lungs[side]
    cx, cy = sample_point_in_lung(lung, chest.heart, 0.05, rng)
    cy = max(cy, 0.5 * (lung.top + lung.dome_y))
    angle = np.deg2rad(rng.uniform(-25, 25))
    along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    across = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    length, thick = rng.uniform(0.14, 0.25), rng.uniform(0.022, 0.04)
    return (along / length) ** 2 + (across / thick) ** 2 < 1.0


def _wedge_atelectasis(frame: Frame, chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Segmental atelectasis: a collapsed wedge, apex at the hilum, base on the pleura."""
    x, y = frame.x, frame.y
    apex_x, apex_y = side * 0.16 + chest.mediastinal_shift, rng.uniform(-0.15, 0.1)
    direction = np.deg2rad(rng.uniform(20, 70))  # downwards and outwards
    spread = np.deg2rad(rng.uniform(10, 18))
    angle = np.arctan2(y - apex_y, side * (x - apex_x))
    radius = np.hypot(x - apex_x, y - apex_y)
    return (np.abs(angle - direction) < spread) & (radius > 0.05)


def add_atelectasis(density: np.ndarray, frame: Frame, chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """A plate or wedge opacity in the ``side`` lung, in place (volume loss is in the layout); returns its mask."""
    shape_of = _plate_atelectasis if rng.random() < 0.5 else _wedge_atelectasis
    opacity = shape_of(frame, chest, side, rng) & (chest.lung_levels[side] < 1.0) & ~chest.mediastinum
    density += ATELECTASIS_DENSITY * opacity
    return opacity


def _add_sphere(
    density: np.ndarray, frame: Frame, centre: tuple[float, float], radius: float, peak: float = NODULE_DENSITY
) -> np.ndarray:
    """A round opacity (a sphere's projected thickness, ``peak`` at its centre), in place; returns its disc."""
    cx, cy = centre
    r2 = ((frame.x - cx) ** 2 + (frame.y - cy) ** 2) / radius**2
    density += peak * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    return r2 < 1.0


def add_nodules(
    density: np.ndarray, frame: Frame, chest: Chest, side: int, rng: np.random.Generator
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
        mask |= _add_sphere(density, frame, sample_point_in_lung(lung, chest.heart, radius, rng), radius)
    diameter_mm = 2.0 * largest * frame.units_to_px * FIELD_OF_VIEW_MM / frame.size
    return mask, ("Mass" if diameter_mm > MASS_DIAMETER_MM else "Nodule")


def hyperinflated(anatomy: PatientAnatomy, rng: np.random.Generator) -> PatientAnatomy:
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


def fibrotic(anatomy: PatientAnatomy, rng: np.random.Generator) -> PatientAnatomy:
    """Fibrosis' volume loss: lower apices, narrower lungs."""
    a = anatomy
    return dataclasses.replace(
        a,
        lung_top=a.lung_top + rng.uniform(*FIBROSIS_APEX_DESCENT),
        lung_width=a.lung_width * rng.uniform(*FIBROSIS_NARROWING),
    )


def _zone(lung: Lung, y):
    """Height in the lung: 0 at the apex, 1 at the costophrenic angle."""
    return (y - lung.top) / (lung.dome_y - lung.top)


def _lung_region(chest: Chest, side: int) -> np.ndarray:
    """The ``side`` lung's pixels off the mediastinum: where its signs may show."""
    return (chest.lung_levels[side] < 1.0) & ~chest.mediastinum


def _lobe(frame: Frame, chest: Chest, side: int, lobe: str, rng: np.random.Generator) -> np.ndarray:
    """The upper or lower part of the ``side`` lung, cut by a straight, slightly tilted fissure: the
    sharp edge that makes an opacity lobar."""
    lung = chest.lungs[side]
    lateral = np.clip((side * frame.x - lung.medial) / lung.width, 0.0, 1.0)
    level = lung.top + rng.uniform(*FISSURE_LEVEL_RANGE) * (lung.dome_y - lung.top)
    below = frame.y > level + rng.uniform(*FISSURE_TILT_RANGE) * (lateral - 0.5)
    return _lung_region(chest, side) & (below if lobe == "lower" else ~below)


def _air_bronchograms(frame: Frame, chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Lucent lines fanning out from the ``side`` hilum (0..1): bronchi still aerated in airless lung."""
    lung = chest.lungs[side]
    hilum_x, hilum_y = side * (lung.medial + 0.05), lung.top + 0.5 * (lung.dome_y - lung.top)
    angle = np.arctan2(frame.y - hilum_y, side * (frame.x - hilum_x))
    distance = np.hypot(frame.x - hilum_x, frame.y - hilum_y)
    count = rng.integers(*BRONCHUS_COUNT_RANGE, endpoint=True)
    bronchi = np.clip((np.cos(count * angle + rng.uniform(0.0, 2.0 * np.pi)) - 0.75) / 0.25, 0.0, 1.0)
    near, far = BRONCHUS_REACH
    return bronchi * ((distance > near) & (distance < far))


def add_round_opacities(
    density: np.ndarray,
    frame: Frame,
    chest: Chest,
    side: int,
    diameters_mm,
    peak: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Spheres of the given diameters in the ``side`` lung, in place; returns their discs."""
    mask = np.zeros_like(chest.lung_mask)
    for diameter in diameters_mm:
        radius = diameter * frame.size / (2.0 * FIELD_OF_VIEW_MM * frame.units_to_px)
        centre = sample_point_in_lung(chest.lungs[side], chest.heart, radius, rng)
        mask |= _add_sphere(density, frame, centre, radius, peak)
    return mask


def add_infiltration(
    density: np.ndarray, frame: Frame, chest: Chest, sides: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Faint, ill-defined patches scattered over the mid and lower zones, in place; returns where they show."""
    patches = np.clip((smooth_noise(rng, INFILTRATION_CELLS, frame.size) - 0.2) / 0.8, 0.0, 1.0)
    mask = np.zeros_like(chest.lung_mask)
    for side in sides:
        weight = np.clip((_zone(chest.lungs[side], frame.y) - 0.25) / 0.2, 0.0, 1.0)
        shown = patches * weight * _lung_region(chest, side)
        density += INFILTRATION_DENSITY * shown
        mask |= shown > 0.1
    return mask


def add_pneumonia(
    density: np.ndarray, frame: Frame, chest: Chest, slot: tuple[int, str], rng: np.random.Generator
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
    mottle = np.clip(0.7 + 0.5 * smooth_noise(rng, PNEUMONIA_CELLS, frame.size), 0.0, 1.0)
    airless = mottle * np.sqrt(spread) * region
    density += airless * (PNEUMONIA_DENSITY - BRONCHOGRAM_AIR * _air_bronchograms(frame, chest, side, rng))
    return region


def add_consolidation(
    density: np.ndarray, frame: Frame, chest: Chest, slot: tuple[int, str], rng: np.random.Generator
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


def add_edema(density: np.ndarray, frame: Frame, chest: Chest, rng: np.random.Generator) -> np.ndarray:
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


def add_reticulation(density: np.ndarray, frame: Frame, chest: Chest, rng: np.random.Generator) -> np.ndarray:
    """Fibrosis' network of fine lines, fading from the apices down, in place; returns the zones it covers."""
    ridges = np.exp(-((smooth_noise(rng, FIBROSIS_CELLS, frame.size) / FIBROSIS_LINE_WIDTH) ** 2))
    full, none = FIBROSIS_UPPER_ZONE
    mask = np.zeros_like(chest.lung_mask)
    for side, lung in chest.lungs.items():
        weight = np.clip((none - _zone(lung, frame.y)) / (none - full), 0.0, 1.0)
        region = _lung_region(chest, side) & (weight > 0.0)
        density += FIBROSIS_DENSITY * ridges * weight * region
        mask |= region
    return mask


def add_pleural_thickening(
    density: np.ndarray, frame: Frame, chest: Chest, sides: tuple[int, ...], rng: np.random.Generator
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


def add_hernia(density: np.ndarray, frame: Frame, chest: Chest, rng: np.random.Generator) -> np.ndarray:
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
