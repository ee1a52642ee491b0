"""Condition, group keys and vocabulary checks: the one place a condition is spelled."""

from __future__ import annotations

import pytest

from medsynth.conditions import Condition, Vocabulary, group_key, pathology_label, split_pathologies
from medsynth.errors import InputError


def test_label_and_group_are_canonical() -> None:
    a = Condition.of("nodule|effusion", "ct")
    b = Condition.of(["effusion", "nodule"], "CT")
    assert a == b
    assert a.label == "effusion|nodule" and a.group == "effusion|nodule/CT" == str(a)
    assert group_key(" nodule | effusion ", " mr ") == "effusion|nodule/MR"
    assert pathology_label(["b", "a"]) == "a|b"
    assert split_pathologies(["a|b", "c"]) == ("a", "b", "c")


def test_vocabulary_names_the_unknown_label_and_the_nearest() -> None:
    vocab = Vocabulary.of(["normal", "nodule", "mass"], ["ct", "MR"])
    assert vocab.modalities == ("CT", "MR")
    with pytest.raises(InputError) as err:
        vocab.check("nodul", "CT")
    assert (
        str(err.value)
        == "unknown pathology 'nodul'; this model knows ['normal', 'nodule', 'mass'] (did you mean 'nodule'?)"
    )
    with pytest.raises(InputError, match=r"unknown modality 'PET'; this model knows \['CT', 'MR'\]$"):
        vocab.check("nodule", "PET")
    assert vocab.check("mass|nodule", "mr") == Condition(("mass", "nodule"), "MR")


def test_protocol_form_names_the_model() -> None:
    vocab = Vocabulary.of(["normal", "nodule"], ["CT", "MR"])
    (unknown,) = vocab.unknown_pathologies(["normal", "nodle"])
    assert unknown.message("builtin:phantom-2d") == (
        "'nodle' is not a pathology of model builtin:phantom-2d; allowed: normal, nodule (did you mean 'nodule'?)"
    )
    assert vocab.unknown_modality("ct") is None
    assert vocab.unknown_modality(3) is not None  # not a string: unknown, not a crash
