"""The shortcut check: the NumPy probe equals scikit-learn's fit on the same patient folds; on phantom
films it tells site A from site B, and not site A from site A."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from lungjax.data.phantom import studies
from lungjax.data.phantom.sites import SITES
from lungjax.evaluation.stats import separability

FILM_SIZE = 32
PIXEL_BLOCK = 4  # 32 px films -> 8 x 8 block means: the look of the film, not its anatomy
PATIENTS_PER_SITE = 60
NULL_PERMUTATIONS = 100


def test_the_newton_fit_is_scikit_learns_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 20))
    y = x[:, 0] - 0.5 * x[:, 3] + rng.normal(size=150) > 0
    for c in (0.1, 1.0):
        w, b = separability.fit_logistic(x, y, c)
        reference = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x, y)
        np.testing.assert_allclose(w, reference.coef_[0], atol=1e-6)
        assert b == pytest.approx(reference.intercept_[0], abs=1e-6)


def test_the_probe_scores_each_fold_as_scikit_learn_fitted_on_the_other_patients():
    rng = np.random.default_rng(1)
    sources = np.repeat(["x", "y", "z"], 40)
    patients = np.tile(np.repeat(np.arange(20), 2), 3)
    features = rng.normal(size=(120, 6)) + (sources == "y")[:, None] * 0.8
    groups = np.char.add(np.char.add(sources, "\x1f"), patients.astype(str))
    folds = separability.patient_folds(groups, 5, seed=4)
    for g in np.unique(groups):  # a patient's films share one fold
        assert np.unique(folds[groups == g]).size == 1
    names, index = np.unique(sources, return_inverse=True)
    scores = separability.out_of_fold_scores(features, index, 3, folds)
    for fold in range(5):
        held = folds == fold
        train, test = separability.standardise(features[~held], features[held])
        for s in range(3):
            reference = LogisticRegression(tol=1e-12, max_iter=10_000).fit(train, index[~held] == s)
            np.testing.assert_allclose(scores[held, s], reference.predict_proba(test)[:, 1], atol=1e-6)
    report = separability.shortcut_probe(features, sources, patients, n_bootstrap=0, seed=4)
    per_source = []
    for s in range(3):  # per-fold AUROCs weighted by their (positive, negative) pairs
        aucs, pairs = [], []
        for fold in range(5):
            held = folds == fold
            positive = index[held] == s
            aucs.append(skm.roc_auc_score(positive, scores[held, s]))
            pairs.append(positive.sum() * (~positive).sum())
        per_source.append(np.average(aucs, weights=pairs))
    macro = np.mean(per_source)
    assert report["auroc"] == pytest.approx(macro) and report["n_patients"] == 60
    assert report["auroc_kind"] == "one-vs-rest, macro mean over sources"


def _films(site, stream):
    """Block-mean pixels of the first film of PATIENTS_PER_SITE phantom patients of one site."""
    pixels = [
        studies.draw_patient(n, seed=11, stream=stream, image_size=FILM_SIZE, studies=(1, 1), site=site).films[0].image
        for n in range(PATIENTS_PER_SITE)
    ]
    return separability.block_mean(np.stack(pixels), PIXEL_BLOCK).reshape(PATIENTS_PER_SITE, -1)


def test_the_pixel_probe_separates_sites_a_and_b_but_not_two_sets_of_site_a():
    a, b, a_again = _films(SITES["A"], "site-a"), _films(SITES["B"], "site-b"), _films(SITES["A"], "site-a-again")
    sources = np.repeat(["first", "second"], PATIENTS_PER_SITE)
    patients = np.tile(np.arange(PATIENTS_PER_SITE), 2)
    apart = separability.shortcut_probe(np.concatenate([a, b]), sources, patients, n_bootstrap=200)
    assert apart["separable"] and apart["auroc"] > 0.95 and apart["ci"]["low"] > 0.9
    same = separability.shortcut_probe(np.concatenate([a, a_again]), sources, patients, n_bootstrap=200)
    # The bound is the probe's own null: its AUROC on these very films with the source labels permuted
    # over patients (one film each), whose central 99% an identical pair of sites falls in but for chance.
    rng = np.random.default_rng(0)
    null = [
        separability.shortcut_probe(np.concatenate([a, a_again]), rng.permutation(sources), patients, n_bootstrap=0)[
            "auroc"
        ]
        for _ in range(NULL_PERMUTATIONS)
    ]
    low, high = np.quantile(null, [0.005, 0.995])
    assert not same["separable"] and low < same["auroc"] < high and high < 0.75
    assert same["ci"]["low"] < 0.5 < same["ci"]["high"]


def test_the_probe_refuses_one_source_and_too_few_patients():
    with pytest.raises(ValueError, match="at least two sources"):
        separability.shortcut_probe(np.zeros((10, 2)), ["a"] * 10, np.arange(10))
    with pytest.raises(ValueError, match="at least 5 patients"):
        separability.shortcut_probe(np.zeros((4, 2)), ["a", "a", "b", "b"], [1, 1, 2, 2])
