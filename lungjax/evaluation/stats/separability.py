"""Can a linear probe tell which source a film came from? Zech et al. (PLOS Medicine 2018) found a CNN
told hospitals apart almost perfectly, so a model may learn the hospital instead of the finding.

The probe is an L2-penalised logistic regression, fitted by Newton's method (IRLS) in float64 on
standardised features, one source against the rest; it minimises exactly what scikit-learn's
``LogisticRegression(C=C)`` does (``||w||^2 / 2 + C * sum of log-losses``, intercept not penalised), so
the two agree to the solvers' tolerance. Films are scored out of fold: the patients are split into
``n_folds`` groups and each group is scored by the probe fitted on the others, so no patient is both
fitted and scored. The AUROC (one-vs-rest, macro over sources for more than two) compares films scored
by the same probe (``within_fold_auroc`` says why) and has a patient-bootstrap interval over the
out-of-fold scores, the fitted probes held fixed.
"""

from __future__ import annotations

import numpy as np

from lungjax.evaluation.stats.bootstrap import bootstrap_replicates, interval
from lungjax.evaluation.stats.numeric import divide, optional_float
from lungjax.evaluation.stats.ranking import weighted_ovr_auc

PROBE_C = 1.0  # inverse penalty, scikit-learn's default
N_FOLDS = 5
NEWTON_TOLERANCE = 1e-10  # on the largest step of any coefficient
MAX_NEWTON_STEPS = 100
# Zech et al. called sources told apart "almost perfectly": a probe AUROC this high means the features
# carry the source, so a model reading them can learn the hospital.
SEPARABLE_AUROC = 0.9


def block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    """(N, H, W) films shrunk ``factor`` times by averaging factor x factor blocks: the pixel probe's input,
    coarse enough that it reads the look of the film (exposure, noise, shutters, markers), not its anatomy."""
    images = np.asarray(images, np.float64)
    n, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"films of {h} x {w} do not divide into {factor} x {factor} blocks")
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def fit_logistic(features: np.ndarray, positive: np.ndarray, c: float = PROBE_C) -> tuple[np.ndarray, float]:
    """(weights (D,), intercept) minimising ``||w||^2 / 2 + c * sum log(1 + exp(-y_i (x_i w + b)))``."""
    x = np.asarray(features, np.float64)
    y = np.asarray(positive, np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.r_[np.ones(x.shape[1]), 0.0] / c  # the intercept is not penalised
    beta = np.zeros(design.shape[1])
    for _ in range(MAX_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        gradient = design.T @ (p - y) + penalty * beta
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(beta)), gradient)
        beta -= step
        if np.abs(step).max() < NEWTON_TOLERANCE:
            break
    return beta[:-1], float(beta[-1])


def patient_folds(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold (0..n_folds-1) of each film: whole patients (``groups``) dealt to folds in a seeded order."""
    unique, index = np.unique(np.asarray(groups), return_inverse=True)
    if len(unique) < n_folds:
        raise ValueError(f"the shortcut probe needs at least {n_folds} patients, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_patient = np.empty(len(unique), np.int64)
    fold_of_patient[order] = np.arange(len(unique)) % n_folds
    return fold_of_patient[index]


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Features centred and scaled by the training rows' mean and standard deviation (constant columns kept at 0)."""
    mean, scale = train.mean(axis=0), train.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return [(a - mean) / scale for a in (train, *others)]


def out_of_fold_scores(
    features: np.ndarray, source_index: np.ndarray, n_sources: int, folds: np.ndarray, c: float = PROBE_C
) -> np.ndarray:
    """(N, S) probe scores, each film's from the probes fitted without its fold (one per source vs the rest)."""
    features = np.asarray(features, np.float64).reshape(len(features), -1)
    scores = np.empty((len(features), n_sources))
    for fold in np.unique(folds):
        held = folds == fold
        train, test = standardise(features[~held], features[held])
        for s in range(n_sources):
            w, b = fit_logistic(train, source_index[~held] == s, c)
            scores[held, s] = 1.0 / (1.0 + np.exp(-(test @ w + b)))
    return scores


def within_fold_auroc(
    source_index: np.ndarray, scores: np.ndarray, folds: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """One-vs-rest AUROC (B, S) comparing only films scored in the same fold: the per-fold AUROCs averaged
    with weights W_pos W_neg, which is the share of within-fold (positive, negative) pairs ranked right.

    Pooling scores across folds would compare films scored by different probes, whose intercepts follow
    their training folds' source mix, the opposite of their held-out folds': under no difference at all
    the pooled AUROC falls well below 0.5. Within a fold one probe scores every film, so chance is 0.5.
    """
    n_sources = scores.shape[1]
    wins, pairs = np.zeros((weights.shape[0], n_sources)), np.zeros((weights.shape[0], n_sources))
    for fold in np.unique(folds):
        held = folds == fold
        fold_weights = weights[:, held]
        present = source_index[held][:, None] == np.arange(n_sources)
        pair_weight = (fold_weights @ present) * (fold_weights @ ~present)
        auc = weighted_ovr_auc(source_index[held], scores[held], fold_weights)
        defined = pair_weight > 0
        wins += np.where(defined, np.nan_to_num(auc) * pair_weight, 0.0)
        pairs += pair_weight
    return divide(wins, pairs)


def _probe_auroc(source_index: np.ndarray, scores: np.ndarray, folds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of the probe (B,): source 2 against source 1 for two sources, else the one-vs-rest macro mean."""
    auroc = within_fold_auroc(source_index, scores, folds, weights)
    return auroc[:, 1] if scores.shape[1] == 2 else auroc.mean(axis=1)


def shortcut_probe(
    features: np.ndarray,
    sources: np.ndarray,
    patient_ids: np.ndarray,
    *,
    n_folds: int = N_FOLDS,
    n_bootstrap: int = 1000,
    seed: int = 0,
    c: float = PROBE_C,
) -> dict:
    """How well the features tell the sources apart, out of fold on held-out patients (module docstring).

    ``features`` (N, ...) are flattened per film; ``sources`` (N,) names each film's source and
    ``patient_ids`` its patient within that source (the same id in two sources is two patients).
    """
    sources = np.asarray(sources).astype(str)
    names, source_index = np.unique(sources, return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"the shortcut probe needs films of at least two sources, got {list(names)}")
    groups = np.char.add(np.char.add(sources, "\x1f"), np.asarray(patient_ids).astype(str))
    folds = patient_folds(groups, n_folds, seed)
    scores = out_of_fold_scores(features, source_index, len(names), folds, c)
    point = _probe_auroc(source_index, scores, folds, np.ones((1, len(scores))))[0]
    report = {
        "sources": [str(name) for name in names],
        "n_films": int(len(sources)),
        "n_patients": int(np.unique(groups).size),
        "n_features": int(np.prod(np.shape(features)[1:])),
        "auroc": optional_float(point),
        "ci": None,
        "auroc_kind": "source 2 vs source 1" if len(names) == 2 else "one-vs-rest, macro mean over sources",
        "method": (
            f"L2 logistic regression (C = {c}) on standardised features, {n_folds}-fold out-of-fold scores with "
            "patients split across folds; AUROC over pairs of films scored in the same fold; the interval "
            "resamples patients with the probes held fixed"
        ),
        "separable_at": SEPARABLE_AUROC,
        "separable": bool(point >= SEPARABLE_AUROC),
    }
    if n_bootstrap:
        replicates = bootstrap_replicates(
            lambda weights: {"auroc": _probe_auroc(source_index, scores, folds, weights)}, groups, n_bootstrap, seed
        )
        report["ci"] = interval(replicates["auroc"])
    return report
