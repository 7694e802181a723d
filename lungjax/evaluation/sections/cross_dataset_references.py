"""Published cross-dataset figures to read an external evaluation against: Cohen et al.'s per-label
means and torchxrayvision's per-dataset benchmark AUROCs. Labels a source does not give are absent
(the report shows them as unknown); nothing is filled in.

Provenance:

* Cohen et al. (MIDL 2020) trained DenseNet-121 on each of six datasets and tested on all; the mean
  cross-dataset AUROC per label as quoted in lungjax issue 26 (Hernia 0.91, Effusion 0.89, Edema
  0.88, Cardiomegaly 0.87, Pneumonia 0.74, Infiltration 0.69, Nodule 0.67). Only these seven are
  recorded; the paper's other labels were not checked here.
* torchxrayvision's ``BENCHMARKS.md`` (github.com/mlmed/torchxrayvision at commit
  1dac5f118b5b086bbc16cbbdf0c71f59cc446e03, "Results updated: 06/27/2021"), the row
  ``XRV-DenseNet121-densenet121-res224-all`` of its PadChest, VinBrain (VinDr-CXR) and CheXpert tables,
  copied verbatim (two decimals). The file does not say which split of each dataset was scored, and
  the ``-all`` weights were trained on a union of datasets; it is context, not an external figure.
  The wheel (torchxrayvision 1.5.7) holds no such table; its README links this file.
"""

from __future__ import annotations

from types import MappingProxyType

COHEN2020 = MappingProxyType(
    {
        "key": "cohen2020",
        "citation": (
            "J. P. Cohen, M. Hashir, R. Brooks, H. Bertrand. On the limits of cross-domain generalization in "
            "automated X-ray prediction. MIDL 2020; arXiv:2002.02497"
        ),
        "what": "mean AUROC over the cross-dataset train/test pairs, DenseNet-121 trained on each of six datasets",
        "provenance": "as quoted in lungjax issue 26; not checked against the paper",
        "auroc": MappingProxyType(
            {
                "Hernia": 0.91,
                "Effusion": 0.89,
                "Edema": 0.88,
                "Cardiomegaly": 0.87,
                "Pneumonia": 0.74,
                "Infiltration": 0.69,
                "Nodule": 0.67,
            }
        ),
    }
)

TORCHXRAYVISION_BENCHMARKS = MappingProxyType(
    {
        "key": "torchxrayvision",
        "citation": (
            "J. P. Cohen et al. TorchXRayVision: A library of chest X-ray datasets and models. MIDL 2022, "
            "arXiv:2111.00595; "
            "BENCHMARKS.md of github.com/mlmed/torchxrayvision (commit 1dac5f1, results of 06/27/2021)"
        ),
        "model": "XRV-DenseNet121-densenet121-res224-all",
        "what": "AUROC per dataset as published; split not stated, weights trained on a union of datasets",
        # lungjax source name -> harmonised label -> AUROC
        "auroc": MappingProxyType(
            {
                "padchest": MappingProxyType(
                    {
                        "Atelectasis": 0.77,
                        "Cardiomegaly": 0.93,
                        "Consolidation": 0.88,
                        "Edema": 0.97,
                        "Effusion": 0.95,
                        "Emphysema": 0.87,
                        "Fibrosis": 0.94,
                        "Fracture": 0.70,
                        "Hernia": 0.96,
                        "Infiltration": 0.85,
                        "Mass": 0.85,
                        "Nodule": 0.69,
                        "Pleural_Thickening": 0.79,
                        "Pneumonia": 0.82,
                        "Pneumothorax": 0.81,
                    }
                ),
                "vindr": MappingProxyType(
                    {
                        "Atelectasis": 0.67,
                        "Cardiomegaly": 0.90,
                        "Consolidation": 0.93,
                        "Effusion": 0.87,
                        "Infiltration": 0.86,
                        "Lung Opacity": 0.85,
                        "Pleural_Thickening": 0.84,
                        "Pneumothorax": 0.93,
                    }
                ),
                "chexpert": MappingProxyType(
                    {
                        "Atelectasis": 0.91,
                        "Cardiomegaly": 0.91,
                        "Consolidation": 0.90,
                        "Edema": 0.92,
                        "Enlarged Cardiomediastinum": 0.78,
                        "Fracture": 0.74,
                        "Lung Lesion": 0.84,
                        "Lung Opacity": 0.87,
                        "Effusion": 0.94,
                        "Pneumonia": 0.84,
                        "Pneumothorax": 0.85,
                    }
                ),
            }
        ),
    }
)


def references(labels, sources) -> dict:
    """Both references for ``labels`` and ``sources``, JSON-ready; None where a label is not given."""
    cohen = COHEN2020["auroc"]
    xrv = TORCHXRAYVISION_BENCHMARKS["auroc"]
    return {
        "cohen2020": {
            **{key: value for key, value in COHEN2020.items() if key != "auroc"},
            "auroc": {label: cohen.get(label) for label in labels},
        },
        "torchxrayvision": {
            **{key: value for key, value in TORCHXRAYVISION_BENCHMARKS.items() if key != "auroc"},
            "auroc": {
                source: {label: xrv[source].get(label) for label in labels} for source in sources if source in xrv
            },
        },
    }
