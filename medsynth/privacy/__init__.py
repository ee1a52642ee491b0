"""The memorization check: feature maps, nearest-neighbour search, calibration, the report."""

from medsynth.privacy.calibration import closer_to_train_test, flagged_rate_test
from medsynth.privacy.catalogs import build_index_for_model
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict, load_index_for_model

__all__ = [
    "PrivacyIndex",
    "PrivacyVerdict",
    "build_index_for_model",
    "closer_to_train_test",
    "flagged_rate_test",
    "load_index_for_model",
]
