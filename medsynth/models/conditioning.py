"""Joint conditioning on pathology and modality: two learned vocabularies -> cross-attention tokens.

The context for the UNet's cross-attention is two tokens per scan: ``[pathology, modality]``.
Each vocabulary has its own learned null embedding (index 0), so classifier-free guidance
can drop either condition on its own during training, and ``null()`` drops both at sampling.
A scan with several pathologies gets the *mean* of their embeddings in the pathology token
(a multi-hot combination normalised by the count, so its scale matches a single label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medsynth.conditions import Vocabulary
from medsynth.errors import InputError

NULL_TOKEN = "<null>"


class Conditioner(nn.Module):
    """Learned embeddings of the pathology and modality vocabularies, each with a null token.

    Args:
        pathologies: pathology vocabulary (e.g. ``["effusion", "mass", "nodule", "normal"]``).
        modalities: modality vocabulary (e.g. ``["CT", "MR"]``).
        dim: embedding size = the UNet's ``cross_attention_dim``.

    Example:
        >>> c = Conditioner(["normal", "nodule"], ["CT", "MR"], 8)
        >>> c(["nodule", ["normal", "nodule"]], ["CT", "MR"]).shape
        torch.Size([2, 2, 8])
    """

    n_tokens = 2

    def __init__(self, pathologies: Sequence[str], modalities: Sequence[str], dim: int) -> None:
        super().__init__()
        self.pathologies = [str(p) for p in pathologies]
        self.modalities = [str(m).upper() for m in modalities]
        for name, vocab in (("pathologies", self.pathologies), ("modalities", self.modalities)):
            if not vocab or len(set(vocab)) != len(vocab) or NULL_TOKEN in vocab:
                raise InputError(f"conditioning {name}: expected a non-empty list of unique labels; got {vocab}")
        self.vocabulary = Vocabulary.of(self.pathologies, self.modalities)
        self.dim = int(dim)
        self._pathology_index = {p: i + 1 for i, p in enumerate(self.pathologies)}
        self._modality_index = {m: i + 1 for i, m in enumerate(self.modalities)}
        self.pathology_embedding = nn.Embedding(len(self.pathologies) + 1, self.dim)
        self.modality_embedding = nn.Embedding(len(self.modalities) + 1, self.dim)
        # Same init scale as the UNet's own attention inputs: unit-variance tokens.
        nn.init.normal_(self.pathology_embedding.weight, std=1.0)
        nn.init.normal_(self.modality_embedding.weight, std=1.0)

    @property
    def device(self) -> torch.device:
        return self.pathology_embedding.weight.device

    def _pathology_multi_hot(self, pathologies: Sequence[str | Sequence[str]]) -> torch.Tensor:
        rows = torch.zeros(len(pathologies), len(self.pathologies) + 1)
        for b, item in enumerate(pathologies):
            labels = [item] if isinstance(item, str) else list(item)
            if not labels:
                raise InputError(f"pathology of item {b}: empty; give at least one of {self.pathologies}")
            unknown = self.vocabulary.unknown_pathologies(labels)
            if unknown:
                raise InputError(unknown[0].message())
            for label in labels:
                rows[b, self._pathology_index[str(label)]] = 1.0
            rows[b] /= rows[b].sum()
        return rows.to(self.device)

    def _modality_ids(self, modalities: Sequence[str]) -> torch.Tensor:
        ids = []
        for label in modalities:
            unknown = self.vocabulary.unknown_modality(label)
            if unknown is not None:
                raise InputError(unknown.message())
            ids.append(self._modality_index[str(label).upper()])
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def forward(
        self,
        pathologies: Sequence[str | Sequence[str]],
        modalities: Sequence[str],
        drop_pathology: torch.Tensor | None = None,
        drop_modality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attention context ``(B, 2, dim)``.

        Args:
            pathologies: per item a label or a list of labels (combined by mean embedding).
            modalities: per item a modality label.
            drop_pathology, drop_modality: optional bool ``(B,)``; True replaces that token by its null.
        """
        if isinstance(pathologies, str) or isinstance(modalities, str):
            raise InputError("pathologies and modalities must be sequences with one entry per item")
        if len(pathologies) != len(modalities):
            raise InputError(
                f"got {len(pathologies)} pathology entries but {len(modalities)} modalities; need one of each per item"
            )
        weights = self._pathology_multi_hot(pathologies)
        p_tok = weights @ self.pathology_embedding.weight  # mean of the chosen embeddings
        m_tok = self.modality_embedding(self._modality_ids(modalities))
        if drop_pathology is not None:
            null_p = self.pathology_embedding.weight[0].expand_as(p_tok)
            p_tok = torch.where(drop_pathology.to(self.device).bool()[:, None], null_p, p_tok)
        if drop_modality is not None:
            null_m = self.modality_embedding.weight[0].expand_as(m_tok)
            m_tok = torch.where(drop_modality.to(self.device).bool()[:, None], null_m, m_tok)
        return torch.stack([p_tok, m_tok], dim=1)

    def extended(
        self, new_pathologies: Mapping[str, str] | None = None, new_modalities: Mapping[str, str] | None = None
    ) -> Conditioner:
        """A copy with new vocabulary entries appended; every existing row (null included) kept as it is.

        Args:
            new_pathologies, new_modalities: new label -> ``init_from``: the existing label whose
                embedding the new row starts from, or ``"mean"`` (the mean of the labelled rows,
                the null row left out).

        Raises:
            InputError: a new label that already exists, or an ``init_from`` that names no label.
        """
        new_p, new_m = dict(new_pathologies or {}), {str(k).upper(): v for k, v in (new_modalities or {}).items()}
        for table, old, new in (
            ("new_pathologies", self.pathologies, new_p),
            ("new_modalities", self.modalities, new_m),
        ):
            for label in new:
                if label in old:
                    raise InputError(
                        f"{table}.{label}: already in the base vocabulary {old}; new entries need new names"
                    )
        out = Conditioner([*self.pathologies, *new_p], [*self.modalities, *new_m], self.dim).to(self.device)
        with torch.no_grad():
            for table, old, new, src in (
                ("new_pathologies", self.pathologies, new_p, self.pathology_embedding.weight),
                ("new_modalities", self.modalities, new_m, self.modality_embedding.weight),
            ):
                dst = out.pathology_embedding.weight if table == "new_pathologies" else out.modality_embedding.weight
                dst[: len(old) + 1] = src
                for j, (label, init) in enumerate(new.items()):
                    dst[len(old) + 1 + j] = self._init_row(table, label, init, old, src)
        return out

    @staticmethod
    def _init_row(table: str, label: str, init: str, old: list[str], rows: torch.Tensor) -> torch.Tensor:
        if init == "mean":
            return rows[1:].mean(dim=0)
        key = init.upper() if table == "new_modalities" else init
        if key not in old:
            raise InputError(
                f"{table}.{label}.init_from: {init!r} is not a base label; expected 'mean' or one of {old}"
            )
        return rows[old.index(key) + 1]

    def null(self, batch: int) -> torch.Tensor:
        """Context with both tokens null ``(batch, 2, dim)``: the unconditional branch of CFG."""
        p = self.pathology_embedding.weight[0]
        m = self.modality_embedding.weight[0]
        return torch.stack([p, m], dim=0).unsqueeze(0).expand(batch, -1, -1).contiguous()
