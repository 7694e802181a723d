"""Phantom hospitals: each site effect measured on the pixels or the labels against its definition, and
the shortcut a site leaves (a classifier on pixel statistics tells the sites apart)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungjax.data import nih_layout, phantom, radiograph_files
from lungjax.data.phantom import findings14, sites, source_trees, studies
from lungjax.data.phantom.anatomy import sample_anatomy
from lungjax.data.sources import hospital

Z = 4.5  # binomial bounds, in standard errors
SIZE = 64


def within(count: int, total: int, rate: float) -> bool:
    return abs(count - rate * total) <= Z * math.sqrt(total * rate * (1 - rate)) + 1


def uniform(level: int, size: int = SIZE) -> np.ndarray:
    return np.full((size, size), level, np.uint8)


def test_a_site_with_the_defaults_changes_nothing():
    plain = sites.Site("plain")
    for number in range(1, 6):
        bare = studies.draw_patient(number, seed=1, stream="s", image_size=32, lateral_rate=0.3)
        sited = studies.draw_patient(number, seed=1, stream="s", image_size=32, lateral_rate=0.3, site=plain)
        assert [(f.view, f.labelled) for f in bare.films] == [(f.view, f.labelled) for f in sited.films]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(bare.films, sited.films, strict=True))
    anatomy = sample_anatomy(np.random.default_rng(0))
    bare = list(findings14.films(anatomy, 4, np.random.default_rng(5), 32))
    sited = list(findings14.films(anatomy, 4, np.random.default_rng(5), 32, plain))
    for (view, names, image, boxes), (view2, names2, image2, boxes2) in zip(bare, sited, strict=True):
        assert (view, names, boxes) == (view2, names2, boxes2) and np.array_equal(image, image2)


@pytest.mark.parametrize("level", [20, 90, 128, 230])
def test_exposure_and_contrast_curve_as_defined(level):
    site = sites.Site("curve", exposure=-0.08, contrast=0.8, gamma=1.3)
    out = site.expose(uniform(level), np.random.default_rng(0))
    expected = np.clip(0.5 + 0.8 * (level / 255.0 - 0.5) - 0.08, 0.0, 1.0) ** 1.3 * 255.0
    assert np.abs(out.astype(float) - expected).max() <= 1.0


def test_noise_has_the_set_standard_deviation():
    out = sites.Site("noisy", noise=0.04).expose(uniform(128, 256), np.random.default_rng(0))
    assert abs(out.std() - 0.04 * 255) < 0.03 * 0.04 * 255
    assert abs(out.mean() - 128.0) < 0.5


def test_a_coarser_detector_keeps_the_block_means_and_loses_the_fine_detail():
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    out = sites.Site("coarse", downsample=4).expose(image, np.random.default_rng(0))

    def blocks(a):
        return a.astype(float).reshape(SIZE // 8, 8, SIZE // 8, 8).mean(axis=(1, 3))

    assert np.abs(blocks(out) - blocks(image)).mean() < 3.0
    detail = [cv2.Laplacian(a.astype(np.float32), cv2.CV_32F).std() for a in (image, out)]
    assert detail[1] < 0.35 * detail[0]


def test_collimation_masks_each_side_and_leaves_the_field():
    image = np.random.default_rng(1).integers(1, 256, (SIZE, SIZE), dtype=np.uint8)
    site = sites.Site("shuttered", collimation=0.1)
    out = site.expose(image, np.random.default_rng(0))
    band = site.shutter_width(SIZE)
    assert band == 6
    border = np.ones((SIZE, SIZE), bool)
    border[band:-band, band:-band] = False
    assert (out[border] == sites.SHUTTER_LEVEL).all()
    np.testing.assert_array_equal(out[~border], image[~border])


@pytest.mark.parametrize("corner", sites.CORNERS)
def test_a_marker_is_burned_into_its_corner_only(corner):
    site = sites.Site("marked", marker_rate=1.0, marker_corner=corner, collimation=0.05)
    plain = sites.Site("plain", collimation=0.05)
    image = uniform(100)
    out, without = site.expose(image, np.random.default_rng(3)), plain.expose(image, np.random.default_rng(3))
    rows, columns = site.marker_box(SIZE)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[rows, columns] = True
    np.testing.assert_array_equal(out[~inside], without[~inside])
    lit = out[inside] == sites.MARKER_LEVEL
    assert lit.sum() >= sites.MARKER_CHARACTERS * sites.MIN_LIT_CELLS and (out[inside][~lit] == 100).all()
    centre = (rows.start + rows.stop) / 2 < SIZE / 2, (columns.start + columns.stop) / 2 < SIZE / 2
    assert centre == (corner.startswith("top"), corner.endswith("left"))
    assert rows.start >= site.shutter_width(SIZE) and rows.stop <= SIZE - site.shutter_width(SIZE)


def test_markers_appear_on_the_set_share_of_films():
    site = sites.Site("sometimes", marker_rate=0.3)
    rng = np.random.default_rng(0)
    rows, columns = site.marker_box(SIZE)
    marked = sum(bool((site.expose(uniform(100), rng)[rows, columns] == 255).any()) for _ in range(400))
    assert within(marked, 400, 0.3)


@pytest.fixture(scope="module")
def site_c_films():
    """First films of 300 patients at site C (each an independent draw of the site's proportions)."""
    site = sites.SITES["C"]
    return [
        studies.draw_patient(n, seed=2, stream="C", image_size=32, studies=(1, 1), site=site).films[0]
        for n in range(1, 301)
    ]


def test_portable_ap_films_at_the_sites_rate(site_c_films):
    ap = sum(film.view == "AP" for film in site_c_films)
    assert within(ap, len(site_c_films), sites.SITES["C"].ap_rate)


@pytest.mark.parametrize("finding", ["Effusion", "Edema", "Pneumothorax", "Nodule", "Infiltration"])
def test_prevalence_follows_the_sites_weight_factors(site_c_films, finding):
    table = findings14.finding_combinations()
    factors = dict(sites.SITES["C"].prevalence)
    weights = np.array(
        [
            count * np.prod([factors.get(n, 1.0) for n in names])
            for count, names in zip(table.images, table.findings, strict=True)
        ]
    )
    has = np.array([finding in names for names in table.findings])
    expected = weights[has].sum() / weights.sum()
    nih = table.images[has].sum() / table.images.sum()
    shown = sum(finding in film.findings for film in site_c_films)
    assert within(shown, len(site_c_films), expected)
    if factors.get(finding, 1.0) >= 2.0:
        assert not within(shown, len(site_c_films), nih)  # measurably away from NIH's own prevalence


def test_the_labeller_misses_nodules_at_the_set_rate():
    site = sites.Site("careless", missed_nodule_rate=0.4)
    rng = np.random.default_rng(0)
    reported = [site.labelled(("Effusion", "Nodule"), rng) for _ in range(2000)]
    assert set(reported) == {("Effusion", "Nodule"), ("Effusion",)}
    assert within(reported.count(("Effusion",)), 2000, 0.4)
    assert all(site.labelled(("Mass", "Effusion"), rng) == ("Mass", "Effusion") for _ in range(50))
    assert {site.labelled(("Nodule",), rng) for _ in range(50)} == {("Nodule",), ()}


def test_a_hospital_tree_states_what_its_labeller_reported(tmp_path):
    site = sites.Site("careless", prevalence={"Nodule": 40.0}, missed_nodule_rate=0.5)
    tree = source_trees.write_hospital_tree(
        tmp_path / "t", 60, seed=4, image_size=32, site=site, formats=("png",), uncertain_rate=0.0, not_stated_rate=0.0
    )
    films = tree.films
    shows = films["findings"].str.split("|").map(lambda names: "Nodule" in names)
    missed = shows & ~films["labelled"].str.split("|").map(lambda names: "Nodule" in names)
    studies_shown = films[shows].drop_duplicates("study_id")
    assert len(studies_shown) > 40 and within(int(missed[studies_shown.index].sum()), len(studies_shown), 0.5)
    read = hospital.read(tree.manual_dir).frame.set_index("path")
    assert (read.loc[films.loc[missed, "path"], "Nodule"] == 0).all()
    assert (read.loc[films.loc[shows & ~missed, "path"], "Nodule"] == 1).all()


def pixel_statistics(image: np.ndarray) -> list[float]:
    """What a shortcut-hunting model could use without looking at the chest."""
    image = image.astype(np.float32)
    corner = SIZE // 5
    corners = [image[:corner, :corner], image[:corner, -corner:], image[-corner:, :corner], image[-corner:, -corner:]]
    return [
        image.mean(),
        image.std(),
        *np.percentile(image, (5, 50, 95)),
        np.abs(cv2.Laplacian(image, cv2.CV_32F)).mean(),
        (image == 0).mean(),
        *((c == 255).mean() for c in corners),
    ]


def site_accuracy(named_sites) -> float:
    """Held-out accuracy of a logistic regression on pixel statistics, patients disjoint (40 fit, 20 held out)."""
    features, site_of, held_out = [], [], []
    for label, site in enumerate(named_sites):
        for n in range(1, 61):
            film = studies.draw_patient(n, seed=9, stream=site.name, image_size=SIZE, studies=(1, 1), site=site)
            features.append(pixel_statistics(film.films[0].image))
            site_of.append(label)
            held_out.append(n > 40)
    x, y, test = np.array(features), np.array(site_of), np.array(held_out)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[~test], y[~test])
    return float((model.predict(x[test]) == y[test]).mean())


def test_a_pixel_statistics_classifier_tells_the_sites_apart():
    assert site_accuracy(list(sites.SITES.values())) >= 0.9  # 60 held-out films, three sites
    # The control: three "sites" without any effect are not told apart (chance is a third).
    assert site_accuracy([sites.Site(name) for name in ("X", "Y", "W")]) <= 0.6


def test_an_nih_tree_at_a_site(tmp_path):
    root = phantom.write_nih_tree(tmp_path / "c", 60, seed=1, image_size=32, task="full14", site="C")
    entries = pd.read_csv(root / nih_layout.DATA_ENTRY_FILE)
    assert within(int((entries["View Position"] == "AP").sum()), len(entries), sites.SITES["C"].ap_rate)
    again = phantom.write_nih_tree(tmp_path / "again", 60, seed=1, image_size=32, task="full14", site="C")
    assert (root / nih_layout.DATA_ENTRY_FILE).read_bytes() == (again / nih_layout.DATA_ENTRY_FILE).read_bytes()
    plain = phantom.write_nih_tree(tmp_path / "plain", 60, seed=1, image_size=32, task="full14")
    assert (root / nih_layout.DATA_ENTRY_FILE).read_bytes() != (plain / nih_layout.DATA_ENTRY_FILE).read_bytes()
    with pytest.raises(ValueError, match="a site applies to full14 films"):
        phantom.write_nih_tree(tmp_path / "six", 2, image_size=32, site="A")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gamma": 0}, "gamma must be > 0"),
        ({"ap_rate": 1.2}, "ap_rate must be in"),
        ({"downsample": 1.5}, "downsample must be an integer"),
        ({"marker_corner": "centre"}, "marker_corner must be one of"),
        ({"prevalence": {"Nodules": 2.0}}, "prevalence maps findings"),
        ({"collimation": 0.3}, "collimation in"),
    ],
)
def test_bad_site_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        sites.Site("bad", **options)
    with pytest.raises(ValueError, match="unknown site 'D'"):
        sites.site("D")


@pytest.mark.parametrize("writer", sorted(source_trees.WRITERS))
def test_every_source_tree_takes_a_site(tmp_path, writer):
    if writer in ("vindr", "hospital"):
        pytest.importorskip("pydicom")
    site = sites.SITES["C"]
    tree = source_trees.WRITERS[writer](tmp_path / "t", 4, seed=1, image_size=SIZE, site="C")
    band = site.shutter_width(SIZE)
    rows, columns = site.marker_box(SIZE)
    for path in tree.films["path"]:
        pixels = radiograph_files.read(tree.manual_dir / path, allow_lateral=True).pixels.astype(int)
        border = np.concatenate([pixels[:band].ravel(), pixels[-band:].ravel(), pixels[:, :band].ravel()])
        assert border.mean() < 8, path  # the shutters, through JPEG's rounding where the film is a JPEG
        assert pixels[rows, columns].max() > 200, path  # site C burns a marker into every film
