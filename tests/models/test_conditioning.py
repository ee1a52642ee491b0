"""The pathology/modality conditioner."""

from __future__ import annotations

import pytest
import torch

from medsynth.errors import InputError
from medsynth.models.conditioning import Conditioner


@pytest.fixture
def cond() -> Conditioner:
    torch.manual_seed(0)
    return Conditioner(["effusion", "mass", "nodule", "normal"], ["CT", "MR"], 6)


def test_tokens_are_the_label_embeddings(cond):
    ctx = cond(["nodule", "normal"], ["CT", "mr"])
    assert ctx.shape == (2, 2, 6)
    assert torch.equal(ctx[0, 0], cond.pathology_embedding.weight[3])
    assert torch.equal(ctx[1, 1], cond.modality_embedding.weight[2])
    assert not torch.equal(ctx[0, 0], ctx[1, 0])


def test_several_pathologies_are_the_mean_embedding(cond):
    ctx = cond([["nodule", "effusion"]], ["CT"])
    w = cond.pathology_embedding.weight
    assert torch.allclose(ctx[0, 0], (w[1] + w[3]) / 2)


def test_dropped_tokens_are_null_and_null_drops_both(cond):
    ctx = cond(
        ["mass", "mass"],
        ["CT", "CT"],
        drop_pathology=torch.tensor([True, False]),
        drop_modality=torch.tensor([False, True]),
    )
    assert torch.equal(ctx[0, 0], cond.pathology_embedding.weight[0])
    assert torch.equal(ctx[0, 1], cond.modality_embedding.weight[1])
    assert torch.equal(ctx[1, 0], cond.pathology_embedding.weight[2])
    assert torch.equal(ctx[1, 1], cond.modality_embedding.weight[0])
    both = cond(["mass"], ["MR"], torch.tensor([True]), torch.tensor([True]))
    assert torch.equal(cond.null(3)[1], both[0])


def test_gradients_reach_the_chosen_embeddings(cond):
    cond(["mass"], ["MR"]).sum().backward()
    g = cond.pathology_embedding.weight.grad
    assert g[2].abs().sum() > 0 and g[[0, 1, 3, 4]].abs().sum() == 0


def test_unknown_labels_name_the_vocabulary(cond):
    with pytest.raises(InputError, match=r"unknown pathology 'tumour'.*\['effusion', 'mass', 'nodule', 'normal'\]"):
        cond(["tumour"], ["CT"])
    with pytest.raises(InputError, match=r"unknown modality 'PET'.*\['CT', 'MR'\]"):
        cond(["mass"], ["PET"])
    with pytest.raises(InputError, match="one of each per item"):
        cond(["mass", "nodule"], ["CT"])
    with pytest.raises(InputError, match="empty"):
        cond([[]], ["CT"])
    with pytest.raises(InputError, match="unique"):
        Conditioner(["a", "a"], ["CT"], 4)
