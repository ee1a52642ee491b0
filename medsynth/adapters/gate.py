"""Token-gated LoRA (``lora.gate: true``): the update applies only to samples of a new token.

Why: the phantom models read their condition through cross-attention over two tokens (pathology,
modality). A LoRA on the UNet's convolutions and attention is a change for every condition, and
a new token that starts as a copy of ``normal`` stays close to it, so the finding it learns is
drawn for ``normal`` too; prior preservation trades the two against each other and never keeps
both (docs/finetuning.md, Measured). Gated, the LoRA layers add their update only to the rows of
a batch whose condition holds a new pathology or modality; every other row, the unconditional
(null) rows of classifier-free guidance included, goes through the base's weights exactly, so
the old classes sample as the base's, bit for bit, whatever the adapter learnt.

The gate is read from the context itself, so that every caller of the UNet (training, previews,
every sampler) gets it without passing labels along: a pathology token is the mean of its labels'
rows of the embedding table (``Conditioner``), and the rows are linearly independent (a handful
of random rows of width ``cond_dim``), so the least-squares weights of a token over the rows are
its labels' weights; a row holds a new token when those weights on the new rows are not ~0.

A gated LoRA cannot be folded into the weights: ``medsynth merge`` refuses it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsynth.errors import InputError
from medsynth.models.conditioning import Conditioner

# Least-squares weights below this are rounding, not a label (a label's weight is 1/k for k labels).
_WEIGHT_TOL = 1e-3


class TokenGate:
    """Per-row 0/1 gate from the context, applied to the output of every LoRA ``B`` layer.

    Args:
        conditioner: the model's conditioner (its current tables are read at every call, so the
            gate follows rows that are being trained).
        n_old_pathologies, n_old_modalities: rows of the base's tables, null included; the rows
            after them are the new tokens.
    """

    def __init__(self, conditioner: Conditioner, n_old_pathologies: int, n_old_modalities: int) -> None:
        self.conditioner = conditioner
        self.n_old = (int(n_old_pathologies), int(n_old_modalities))
        self.gate: torch.Tensor | None = None

    def _new_weight(self, tokens: torch.Tensor, table: torch.Tensor, n_old: int) -> torch.Tensor:
        if table.shape[0] <= n_old:
            return torch.zeros(tokens.shape[0], device=tokens.device)
        t = table.detach().float()
        # tokens = w @ t  ->  w = tokens @ pinv(t); exact for independent rows (float32: lstsq
        # takes no half precision, and an autocast context may hand the UNet one).
        w = torch.linalg.lstsq(t.T, tokens.detach().float().T).solution.T
        return w[:, n_old:].abs().sum(dim=1)

    def from_context(self, context: torch.Tensor) -> torch.Tensor:
        """``(B,)`` 1.0 where the row's pathology or modality token holds a new label, else 0.0."""
        c = self.conditioner
        p = self._new_weight(context[:, 0], c.pathology_embedding.weight, self.n_old[0])
        m = self._new_weight(context[:, 1], c.modality_embedding.weight, self.n_old[1])
        return ((p > _WEIGHT_TOL) | (m > _WEIGHT_TOL)).to(context.dtype)

    def check(self, where: str) -> None:
        """Every old row must read as old and every new one as new, else the gate would change an old class.

        Raises:
            InputError: a new row too close to an old one (a run too short for the row to leave
                its ``init_from`` copy) or tables whose rows are not independent.
        """
        c = self.conditioner
        p_rows, m_rows = c.pathology_embedding.weight.detach(), c.modality_embedding.weight.detach()
        for name, rows, other, first in (
            ("pathology", p_rows, m_rows[0], True),
            ("modality", m_rows, p_rows[0], False),
        ):
            n_old = self.n_old[0] if first else self.n_old[1]
            pair = [rows, other.expand_as(rows)] if first else [other.expand_as(rows), rows]
            got = self.from_context(torch.stack(pair, dim=1))
            want = (torch.arange(rows.shape[0], device=rows.device) >= n_old).to(got.dtype)
            if not torch.equal(got, want):
                raise InputError(
                    f"{where}: lora.gate cannot tell the new {name} rows from the old ones (rows "
                    f"{torch.nonzero(got != want).flatten().tolist()} read wrongly): the new rows are too close to "
                    "their init_from rows; fine-tune longer or raise embedding_lr"
                )

    def before_unet(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        context = kwargs.get("context")
        if context is None:
            raise RuntimeError("gated LoRA: the UNet was called without a context= keyword; the gate reads it")
        self.gate = self.from_context(context)

    def after_lora_b(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        gate = self.gate
        if gate is None or gate.shape[0] != output.shape[0]:
            raise RuntimeError(
                f"gated LoRA: batch of {output.shape[0]} rows in a LoRA layer, gate of "
                f"{None if gate is None else gate.shape[0]}: the layer does not keep the batch axis first"
            )
        return output * gate.view(-1, *([1] * (output.dim() - 1))).to(output.dtype)
