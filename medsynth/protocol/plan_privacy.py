"""The privacy indexes a protocol run will use, and whether they are strong enough.

A sampled case (and a generated background for an insertion) is checked against the model's
whole-image index (``MODEL_DIR/privacy``); an inserted lesion against the lesion index
(``MODEL_DIR/lesion/privacy``). Before anything runs, each index that the run needs is judged
for the groups it will check (``medsynth.privacy.strength``): a self-test recall under 0.9 or
a threshold resting on fewer than 50 holdout scans refuses the protocol (exit 2), unless it sets
``privacy: {accept_weak_index: true}``; then the weaknesses travel with the plan into every
manifest line, the summary and the privacy reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medsynth.errors import MedsynthError

if TYPE_CHECKING:
    from pathlib import Path

    from medsynth.privacy.strength import IndexStrength
    from medsynth.protocol.plan import ModelInfo, QuotaPlan
    from medsynth.protocol.schema import Protocol

IMAGE_INDEX, LESION_INDEX = "image", "lesion"
_NAMES = {IMAGE_INDEX: "privacy index", LESION_INDEX: "lesion privacy index"}


@dataclass(frozen=True)
class IndexUse:
    """One index a run uses: which, for which groups, and how strong it is for them."""

    kind: str  # IMAGE_INDEX or LESION_INDEX
    path: Path
    groups: tuple[str, ...]
    strength: IndexStrength
    weaknesses: tuple[str, ...]

    @property
    def name(self) -> str:
        return _NAMES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.kind, "groups": list(self.groups), "weaknesses": list(self.weaknesses)}


def index_groups(quotas: Sequence[QuotaPlan]) -> dict[str, tuple[str, ...]]:
    """The groups each index checks: ``{IMAGE_INDEX: (...), LESION_INDEX: (...)}`` (an index unused: absent)."""
    from medsynth.protocol.plan_insert import INTO_GENERATED

    image: list[str] = []
    lesion: list[str] = []
    for q in quotas:
        if q.insert is None:
            image.append(q.group)
            continue
        lesion.append(q.group)
        if q.insert.into == INTO_GENERATED:
            image.append(q.insert.background)
    found = {IMAGE_INDEX: tuple(dict.fromkeys(image)), LESION_INDEX: tuple(dict.fromkeys(lesion))}
    return {k: v for k, v in found.items() if v}


def check_image_index_present(
    add: Callable[[tuple[Any, ...], str], None], protocol: Protocol, model: ModelInfo
) -> None:
    """A gated run that samples whole images needs the whole-image index (lesion indexes: ``plan_insert``)."""
    from medsynth.protocol.plan_insert import INTO_GENERATED

    q = protocol.quotas
    samples = q is None or any(x.insert is None or x.insert.into == INTO_GENERATED for x in q)
    if protocol.privacy.gate and samples and not model.has_privacy_index:
        add(
            ("privacy", "gate"),
            f"model {model.ref} has no privacy index ({model.path}/privacy is missing); build one with "
            "`medsynth privacy-index MODEL_DIR --train TRAIN.csv --holdout HOLDOUT.csv`, or set "
            "`privacy: {gate: false}` to generate without the memorization check",
        )


def check_index_strength(
    add: Callable[[tuple[Any, ...], str], None], protocol: Protocol, model: ModelInfo, quotas: Sequence[QuotaPlan]
) -> tuple[IndexUse, ...]:
    """Judge every index the run uses; a weak one is a problem (``add``) unless accepted.

    Indexes that are missing were reported by the earlier checks and are skipped here.
    """
    from medsynth.privacy.index import INDEX_DIR, stored_strength
    from medsynth.privacy.lesions import LESION_INDEX_DIR

    if not protocol.privacy.gate:
        return ()
    dirs = {IMAGE_INDEX: model.path / INDEX_DIR, LESION_INDEX: model.path / LESION_INDEX_DIR}
    uses = []
    for kind, groups in index_groups(quotas).items():
        path = dirs[kind]
        if not (path / "index.json").is_file():
            continue
        try:
            strength = stored_strength(path)
        except MedsynthError as exc:
            add(("privacy",), str(exc))
            continue
        weak = tuple(strength.weaknesses(groups))
        uses.append(IndexUse(kind, path, groups, strength, weak))
        if weak and not protocol.privacy.accept_weak_index:
            add(
                ("privacy",),
                f"model {model.ref}'s {_NAMES[kind]} is weak: {'; '.join(weak)}; rebuild it with more holdout "
                "scans (`medsynth privacy-index MODEL_DIR --train TRAIN.csv --holdout HOLDOUT.csv`), or set "
                "`privacy: {accept_weak_index: true}` to generate anyway (recorded in the manifest and reports)",
            )
    return tuple(uses)
