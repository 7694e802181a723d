"""The out-of-distribution score: Ledoit-Wolf as scikit-learn computes it, the distance as a float64 direct
computation, the false-alarm rate held on new in-distribution draws, far inputs flagged, the record
through its two stored parts, and the even sample of a split it is fitted on. tests/test_export.py
holds an exported bundle's fit against its films' features."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest
from conftest import example_source
from sklearn.covariance import LedoitWolf

from lungjax.evaluation import out_of_distribution
from lungjax.evaluation.fit import ood

DIMENSIONS = 32
RATE = 0.05
N_TRAIN, N_VALIDATION, N_TEST = 400, 2000, 4000


def _draws(rng, n, mixing):
    """Correlated, skewed features: a Gaussian mixed by ``mixing``, then a softplus (like ReLU features)."""
    return np.logaddexp(0.0, rng.normal(size=(n, DIMENSIONS)) @ mixing)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(DIMENSIONS, DIMENSIONS)) / np.sqrt(DIMENSIONS)
    score = ood.fit(_draws(rng, N_TRAIN, mixing), _draws(rng, N_VALIDATION, mixing), RATE)
    return score, _draws(rng, N_TEST, mixing), mixing


def test_the_shrunk_covariance_is_scikit_learns_ledoit_wolf(fitted):
    rng = np.random.default_rng(1)
    x = _draws(rng, 100, fitted[2])
    mean, covariance, shrinkage = ood.ledoit_wolf(x)
    reference = LedoitWolf().fit(x)
    np.testing.assert_allclose(covariance, reference.covariance_, atol=1e-12)
    np.testing.assert_allclose(mean, reference.location_)
    assert shrinkage == pytest.approx(reference.shrinkage_)


def test_the_distance_is_the_direct_float64_mahalanobis_distance(fitted):
    score, test, _ = fitted
    centred = test[:50] - score.mean
    direct = np.sqrt(np.einsum("nd,de,ne->n", centred, np.linalg.inv(score.covariance), centred))
    np.testing.assert_allclose(score.score(test[:50]), direct, rtol=1e-10)


def test_in_distribution_films_are_flagged_at_the_chosen_rate(fitted):
    """The threshold is a validation quantile, so the flagged share of new draws is the chosen rate up to
    two binomial errors: the quantile's own (its coverage has variance p(1-p)/n_validation) and the new
    draws' (p(1-p)/n_test). Four standard deviations of both bound it."""
    score, test, _ = fitted
    flagged = score.is_unlike(test).mean()
    bound = 4 * np.sqrt(RATE * (1 - RATE) * (1 / N_VALIDATION + 1 / N_TEST))
    assert abs(flagged - RATE) < bound


def test_far_away_inputs_fire_and_the_record_survives_its_two_parts(fitted):
    """The export stores the scalars as JSON and the arrays as .npz: the record read back scores the same."""
    score, test, _ = fitted
    far = test[:20] + 10 * test.std(axis=0)
    assert score.is_unlike(far).all()
    again = ood.OutOfDistribution.from_parts(json.loads(json.dumps(score.summary())), score.to_npz())
    np.testing.assert_array_equal(again.score(test[:100]), score.score(test[:100]))
    assert again.threshold == score.threshold and again.false_alarm_rate == RATE


def test_parts_that_cannot_be_a_record_are_refused_in_one_line(fitted):
    score = fitted[0]
    summary = score.summary()
    with pytest.raises(ValueError, match="not the mean and covariance as .npz"):
        ood.OutOfDistribution.from_parts(summary, b"not an npz")
    with pytest.raises(ValueError, match="not positive definite"):
        negative = dataclasses.replace(score, covariance=-score.covariance)
        ood.OutOfDistribution.from_parts(summary, negative.to_npz())
    with pytest.raises(ValueError, match="says 33"):
        ood.OutOfDistribution.from_parts({**summary, "feature_dimensions": DIMENSIONS + 1}, score.to_npz())
    with pytest.raises(ValueError, match="not a distance and a rate"):
        ood.OutOfDistribution.from_parts({**summary, "threshold": "4"}, score.to_npz())


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="false_alarm_rate must lie in"):
        ood.fit(np.zeros((5, 2)), np.zeros((5, 2)), 1.5)
    with pytest.raises(ValueError, match="one D"):
        ood.fit(np.zeros((5, 2)), np.zeros((5, 3)))


@pytest.mark.parametrize("size, limit", [(10, 4), (10, 10), (3, 8), (4097, 4096)])
def test_the_fit_samples_each_split_evenly_and_in_order(size, limit):
    """``spread``: at most ``limit`` examples, the first and the last among them, gaps differing by one at most."""
    source = example_source([{"patient_id": i} for i in range(size)])
    picked = [example["patient_id"] for example in out_of_distribution.spread(source, limit)]
    assert len(picked) == min(size, limit) and picked[0] == 0 and picked[-1] == size - 1
    gaps = np.diff(picked)
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1


def test_the_training_sources_are_the_source_or_each_source_of_a_union():
    data = ml_collections.ConfigDict({"source": "phantom", "sources": (), "manual_dir": ""})
    assert out_of_distribution.training_sources(data) == ["phantom"]
    data.manual_dir = ""
    data.sources = (("hospital", 1.0, "phantom:A"), ("hospital", 2.0, "/data/north"), ("chexpert", 1.0))
    assert out_of_distribution.training_sources(data) == ["hospital-A", "hospital-north", "chexpert"]
