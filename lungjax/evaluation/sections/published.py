"""Published per-finding test AUROCs on ChestX-ray14, to stand beside ours in the multi-label report.

Two tables, each with the split it was measured on, because the split decides what a comparison
means: Wang et al. scored NIH's official patient-wise test list; CheXNet scored its own random
patient-disjoint 70/10/20 split, whose test set is not public, so no other model's figures are
split-matched to CheXNet's.

Provenance of the numbers (checked against public copies of the tables, not against the papers' PDFs):

* CheXNet, Rajpurkar et al. 2017, arXiv:1711.05225 (v3), Table 2, column "CheXNet (ours)": as
  quoted, identically, by the reimplementations arnoweng/CheXNet (README, all 14) and
  jm12138/Paddle-CheXNet (README, the first 8) and by a CheXNet reproduction's README (all 14);
  the column's mean is CheXNet's published 0.8414.
  The same table's columns for Wang et al. (an earlier arXiv version of their paper, random split,
  mean 0.7381) and Yao et al. 2017 (mean 0.8027) are recorded with it as ``also_in_table``.
* Wang et al. 2017, arXiv:1705.02315v5 (the updated version; the CVPR 2017 paper had 8 findings),
  ChestX-ray14 AUROCs on NIH's published split: as quoted by space-bacon/SRT
  (``scripts/cxr_probe.py``, which gives the table as "Table 17"; that number was not checked);
  the per-finding values average to the 0.7451 that source gives as the published mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType


@dataclasses.dataclass(frozen=True)
class PublishedTable:
    key: str
    column: str  # the report's column header
    citation: str
    arxiv: str
    table: str
    model: str
    split: str
    official_split: bool  # measured on NIH's official test list (test_list.txt)
    auroc: Mapping[str, float]  # NIH finding name -> AUROC
    verified_via: tuple[str, ...]
    # other columns of the same table, quoted by the paper: column name -> finding -> AUROC
    also_in_table: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict:
        """The table as JSON-ready data, with the mean over its own findings."""
        return {
            "column": self.column,
            "citation": self.citation,
            "arxiv": self.arxiv,
            "table": self.table,
            "model": self.model,
            "split": self.split,
            "official_split": self.official_split,
            "auroc": dict(self.auroc),
            "mean_auroc": round(sum(self.auroc.values()) / len(self.auroc), 4),
            "verified_via": list(self.verified_via),
            **({"also_in_table": {k: dict(v) for k, v in self.also_in_table.items()}} if self.also_in_table else {}),
        }


WANG2017 = PublishedTable(
    key="wang2017_official",
    column="Wang et al. 2017 (official split)",
    citation=(
        "X. Wang, Y. Peng, L. Lu, Z. Lu, M. Bagheri, R. M. Summers. ChestX-ray8: Hospital-scale Chest X-ray "
        "Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax "
        "Diseases. CVPR 2017; 14-finding results in the updated arXiv version"
    ),
    arxiv="1705.02315v5",
    table="ChestX-ray14 AUROCs on NIH's published data split, added in v5",
    model="ResNet-50, ImageNet-pretrained, fine-tuned",
    split="NIH's official patient-wise split (train_val_list.txt / test_list.txt; 25,596 test images)",
    official_split=True,
    auroc=MappingProxyType(
        {
            "Atelectasis": 0.7003,
            "Cardiomegaly": 0.8100,
            "Effusion": 0.7585,
            "Infiltration": 0.6614,
            "Mass": 0.6933,
            "Nodule": 0.6687,
            "Pneumonia": 0.6580,
            "Pneumothorax": 0.7993,
            "Consolidation": 0.7032,
            "Edema": 0.8052,
            "Emphysema": 0.8330,
            "Fibrosis": 0.7859,
            "Pleural_Thickening": 0.6835,
            "Hernia": 0.8717,
        }
    ),
    verified_via=("github.com/space-bacon/SRT scripts/cxr_probe.py (per finding and mean 0.7451)",),
)

CHEXNET2017 = PublishedTable(
    key="chexnet2017",
    column="CheXNet 2017 (own split)",
    citation=(
        "P. Rajpurkar, J. Irvin, K. Zhu, B. Yang, H. Mehta, T. Duan, D. Ding, A. Bagul, C. Langlotz, "
        "K. Shpanskaya, M. P. Lungren, A. Y. Ng. CheXNet: Radiologist-Level Pneumonia Detection on Chest "
        "X-Rays with Deep Learning. arXiv 2017"
    ),
    arxiv="1711.05225",
    table="Table 2, column CheXNet (ours)",
    model="DenseNet-121, ImageNet-pretrained, fine-tuned",
    split=(
        "its own random patient-disjoint 70/10/20 split of ChestX-ray14 (test set not published; "
        "not NIH's official split)"
    ),
    official_split=False,
    auroc=MappingProxyType(
        {
            "Atelectasis": 0.8094,
            "Cardiomegaly": 0.9248,
            "Effusion": 0.8638,
            "Infiltration": 0.7345,
            "Mass": 0.8676,
            "Nodule": 0.7802,
            "Pneumonia": 0.7680,
            "Pneumothorax": 0.8887,
            "Consolidation": 0.7901,
            "Edema": 0.8878,
            "Emphysema": 0.9371,
            "Fibrosis": 0.8047,
            "Pleural_Thickening": 0.8062,
            "Hernia": 0.9164,
        }
    ),
    verified_via=(
        "github.com/arnoweng/CheXNet README (all 14, with the Wang et al. and Yao et al. columns)",
        "github.com/jm12138/Paddle-CheXNet README (first 8)",
        "a CheXNet reproduction README, CheXNet (Paper) column (all 14)",
    ),
    also_in_table=MappingProxyType(
        {
            "Wang et al. 2017 (earlier arXiv version, random split)": MappingProxyType(
                {
                    "Atelectasis": 0.716,
                    "Cardiomegaly": 0.807,
                    "Effusion": 0.784,
                    "Infiltration": 0.609,
                    "Mass": 0.706,
                    "Nodule": 0.671,
                    "Pneumonia": 0.633,
                    "Pneumothorax": 0.806,
                    "Consolidation": 0.708,
                    "Edema": 0.835,
                    "Emphysema": 0.815,
                    "Fibrosis": 0.769,
                    "Pleural_Thickening": 0.708,
                    "Hernia": 0.767,
                }
            ),
            "Yao et al. 2017 (arXiv:1710.10501)": MappingProxyType(
                {
                    "Atelectasis": 0.772,
                    "Cardiomegaly": 0.904,
                    "Effusion": 0.859,
                    "Infiltration": 0.695,
                    "Mass": 0.792,
                    "Nodule": 0.717,
                    "Pneumonia": 0.713,
                    "Pneumothorax": 0.841,
                    "Consolidation": 0.788,
                    "Edema": 0.882,
                    "Emphysema": 0.829,
                    "Fibrosis": 0.767,
                    "Pleural_Thickening": 0.765,
                    "Hernia": 0.914,
                }
            ),
        }
    ),
)

TABLES = (WANG2017, CHEXNET2017)


def tables() -> dict[str, dict]:
    """Every table as JSON-ready data keyed by ``PublishedTable.key``, for ``report["published"]``."""
    return {table.key: table.describe() for table in TABLES}
