"""medsynth.evaluation: judge synthetic scans against real ones.

* ``evaluate_fidelity``: FID, KID, MMD, precision/recall, MS-SSIM diversity and conditional
  accuracy, each beside a real-vs-real baseline (``fidelity.py``; metrics in ``metrics.py``);
* ``evaluate_utility``: the same classifier trained on real, real+synthetic and synthetic data,
  scored on real test data (``utility.py``);
* ``load_labelled``: a dataset CSV or a ``medsynth generate`` output folder (``sources.py``);
* ``ImageClassifier``: the small MONAI CNN behind both (``classifier.py``).

Names are imported lazily so that importing one submodule does not load the others.

Example:
    >>> from medsynth.evaluation import evaluate_fidelity, load_labelled
    >>> evaluate_fidelity(load_labelled("real.csv"), load_labelled("synthetic/"), "eval/")  # doctest: +SKIP
"""

from __future__ import annotations

from medsynth.lazy_import import lazy_getattr

_LAZY = {
    "evaluate_fidelity": "medsynth.evaluation.fidelity",
    "FidelityConfig": "medsynth.evaluation.fidelity",
    "evaluate_utility": "medsynth.evaluation.utility",
    "UtilityConfig": "medsynth.evaluation.utility",
    "load_labelled": "medsynth.evaluation.sources",
    "LabelledScans": "medsynth.evaluation.sources",
    "ImageClassifier": "medsynth.evaluation.classifier",
    "ClassifierConfig": "medsynth.evaluation.classifier",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
