"""Privacy indexes from dataset catalogs: groups, disjointness, and a model directory's index.

``build_index_for_model`` is what training calls at its end (and ``medsynth privacy-index``
later): the training and holdout catalogs, put on the model's grid, become the index saved in
``MODEL_DIR/privacy``. ``privacy_check`` (``check.py``) builds an index from catalogs too, but
as they are on disk and never saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.conditions import group_key
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lazy import LazySequence
from medsynth.models.verify import record_folder
from medsynth.privacy.index import INDEX_DIR, PrivacyIndex

if TYPE_CHECKING:
    from medsynth.data.catalog import Catalog


def catalog_groups(catalog: Catalog) -> list[str]:
    """The group (``"pathology/modality"``) of every scan of ``catalog``, in order."""
    return [group_key(r.pathologies, r.modality) for r in catalog.records]


def check_disjoint(train: Catalog, holdout: Catalog) -> None:
    """Raise InputError when the training and holdout catalogs share a scan or a subject.

    The error names CSV rows, never the subject ids themselves.
    """
    paths = {str(r.path) for r in train.records}
    same = [i for i, r in enumerate(holdout.records) if str(r.path) in paths]
    if same:
        raise InputError(
            f"privacy: {len(same)} holdout scans are also training scans (holdout rows {[i + 1 for i in same[:5]]}); "
            "the holdout must hold scans the model never saw"
        )
    subjects = {r.subject for r in train.records if r.subject}
    shared = [i for i, r in enumerate(holdout.records) if r.subject and r.subject in subjects]
    if shared:
        raise InputError(
            f"privacy: {len(shared)} holdout scans come from training subjects (holdout rows "
            f"{[i + 1 for i in shared[:5]]}); the holdout must be disjoint from training by patient"
        )


def _model_grid_scans(catalog: Catalog, model_dir: Path) -> LazySequence[Scan]:
    """A catalog's scans put on a model's grid, read one at a time (memory stays flat)."""
    from medsynth.data.transforms import Preprocessing

    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pre = Preprocessing.from_dict(cfg["preprocessing"])

    def load(i: int) -> Scan:
        # What the model saw: reoriented, resampled, cropped/padded, intensity-clipped.
        return pre.from_model(pre.to_model(catalog.load(i)), catalog.records[i].modality)

    return LazySequence(len(catalog), load)


def build_index_for_model(
    model_dir: str | Path, train: Catalog, holdout: Catalog, quantile: float = 0.99
) -> PrivacyIndex:
    """Build the index of a model directory from its training and holdout catalogs and save it.

    Scans are put on the model's grid first (as the model saw them and as it generates).
    Training scans get opaque ids (``train-00000``...): no path or subject reaches the model dir.

    Raises:
        InputError: not a model directory, overlapping catalogs, unusable scans.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json)")
    check_disjoint(train, holdout)
    index = PrivacyIndex.build(
        _model_grid_scans(train, model_dir),
        _model_grid_scans(holdout, model_dir),
        train_groups=catalog_groups(train),
        holdout_groups=catalog_groups(holdout),
        quantile=quantile,
    )
    index.save(model_dir / INDEX_DIR)
    record_folder(model_dir, INDEX_DIR)  # config.json's size and sha256 records (models.verify)
    return index
