"""The privacy indexes of a fine-tuned model: its fine-tuning scans' and its base's.

With ten scans, copying them is the main risk of a fine-tuning, so a fine-tuned model carries an
index of its own fine-tuning scans, and the generation gate (``protocol.gate``) checks every
sample against it *and* against the base's index (the base's training scans are still in the
weights). Where each lives:

* adapter directory: ``privacy/`` = the fine-tuning scans; the base's ``privacy/`` is reached
  through the base the adapter names (checked by digest);
* merged directory (``medsynth merge``): ``privacy/`` = the base's, copied;
  ``finetune/privacy/`` = the fine-tuning scans', copied.

The model's own ``privacy/`` is the gate's main index either way; this module names the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.adapters.compose import FINETUNE_INDEX_DIR
from medsynth.models.artifact import resolve_base
from medsynth.models.verify import read_config_json, verify_files

if TYPE_CHECKING:
    from medsynth.privacy.index import PrivacyIndex

INDEX_DIR = "privacy"


def extra_index_dirs(model_dir: str | Path) -> list[tuple[str, Path, str]]:
    """``(name, owning model dir, index folder relative to it)`` of each index beside the model's own."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        return []
    adapter = read_config_json(root).get("adapter")
    if adapter is not None:
        base = resolve_base(root, adapter)
        return [("base", base, INDEX_DIR)] if (base / INDEX_DIR / "index.json").is_file() else []
    if (root / FINETUNE_INDEX_DIR / "index.json").is_file():
        return [("finetune", root, FINETUNE_INDEX_DIR)]
    return []


def load_extra_indexes(model_dir: str | Path) -> list[tuple[str, PrivacyIndex]]:
    """The indexes of ``extra_index_dirs``, each checked against its directory's file records first."""
    from medsynth.privacy.index import PrivacyIndex

    out = []
    for name, owner, rel in extra_index_dirs(model_dir):
        verify_files(owner, (f"{rel}/",))
        out.append((name, PrivacyIndex.load(owner / rel)))
    return out
