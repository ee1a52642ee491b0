"""The small image classifier: learns the phantom classes, is seeded, saves without pickle."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from medsynth.data.phantoms import BASE_PATHOLOGIES as PATHOLOGIES  # the classes its expectations were set on
from medsynth.data.phantoms import MODALITIES, make_phantom
from medsynth.errors import InputError
from medsynth.evaluation.classifier import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ClassifierConfig,
    ImageClassifier,
    balanced_order,
    prepare,
)

JOINT = [f"{p}|{m}" for p in PATHOLOGIES for m in MODALITIES]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The CI box has 2 shared cores; a second intra-op thread only adds contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _phantoms(seeds: range, dim: int = 2, size: int = 64) -> tuple[list, list[str]]:
    """One subject per seed, classes in turn: balanced over pathology x modality."""
    scans, labels = [], []
    for i, seed in enumerate(seeds):
        label = JOINT[i % len(JOINT)]
        pathology, modality = label.split("|")
        scans.append(make_phantom(dim=dim, pathologies=pathology, modality=modality, seed=seed, size=size))
        labels.append(label)
    return scans, labels


def test_tells_phantom_pathologies_and_modalities_apart_on_held_out_subjects() -> None:
    """The headline check: >= 95% on subjects the network never saw (see docs/data.md)."""
    train, y_train = _phantoms(range(0, 1600))
    test, y_test = _phantoms(range(100_000, 100_200))
    # 1000 steps of 16 (10 epochs): enough for the lesions, not for memorising 1600 different subjects.
    # 6 epochs sat at the margin: 0.94-0.97 pathology accuracy by seed, and seed 0 moved from 0.94 to
    # 0.96 with the CPU kernels alone (ATEN_CPU_CAPABILITY=default vs AVX2). 10 epochs: 0.975-0.98
    # over seeds 0-3 and both kernel paths (at most 5 of 200 wrong; the bar allows 10).
    config = ClassifierConfig(spatial_dims=2, in_size=64, epochs=10, batch_size=16, seed=0)
    clf = ImageClassifier(JOINT, config).fit(prepare(train, 64), y_train)
    pred = clf.predict(prepare(test, 64))
    pathology_acc = np.mean([p.split("|")[0] == t.split("|")[0] for p, t in zip(pred, y_test)])
    modality_acc = np.mean([p.split("|")[1] == t.split("|")[1] for p, t in zip(pred, y_test)])
    assert modality_acc >= 0.95, modality_acc
    assert pathology_acc >= 0.95, pathology_acc


def test_prepare_resizes_and_standardises() -> None:
    ct = make_phantom(modality="CT", seed=1, size=64)
    mr = make_phantom(modality="MR", seed=1, size=48)
    x = prepare([ct, mr], in_size=32)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    # HU and MR units land on comparable scales: both spread about one unit around zero
    for k in range(2):
        q25, q50, q75 = np.percentile(x[k].numpy(), [25, 50, 75])
        assert abs(q50) < 0.2 and 0.5 < q75 - q25 < 1.5
    full = prepare([ct], in_size=64)[0, 0].numpy()
    lo, med, hi = np.percentile(ct.array, [25, 50, 75])
    np.testing.assert_allclose(full, (ct.array[0] - med) / (hi - lo), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="scan 1 is 3D"):
        prepare([ct, make_phantom(dim=3, size=32)], in_size=32)
    with pytest.raises(InputError, match="no scans"):
        prepare([], in_size=32)


def _tiny_fit(seed: int, **overrides) -> ImageClassifier:
    scans, labels = _phantoms(range(16), size=32)
    config = ClassifierConfig(
        spatial_dims=2, in_size=32, channels=(4, 8), steps=3, batch_size=8, seed=seed, **overrides
    )
    return ImageClassifier(JOINT, config).fit(prepare(scans, 32), labels)


def test_same_seed_same_model_and_the_global_rng_is_untouched() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = _tiny_fit(0), _tiny_fit(0), _tiny_fit(1)
    assert torch.equal(torch.rand(1), expected_next)
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_save_and_load_round_trip_without_pickle(tmp_path) -> None:
    clf = _tiny_fit(0, augment=True)
    x = prepare(_phantoms(range(50, 58), size=32)[0], 32)
    out = clf.save(tmp_path / "clf")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    meta = json.loads((out / CONFIG_FILE).read_text())
    assert meta["classes"] == JOINT and meta["config"]["channels"] == [4, 8]
    loaded = ImageClassifier.load(out)
    np.testing.assert_allclose(loaded.predict_proba(x), clf.predict_proba(x), rtol=1e-6, atol=1e-6)
    assert loaded.predict(x) == clf.predict(x)
    (out / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match=r"config\.json"):
        ImageClassifier.load(out)


def test_outputs_shapes_and_probabilities_in_3d() -> None:
    scans, labels = _phantoms(range(8), dim=3, size=32)
    config = ClassifierConfig(spatial_dims=3, in_size=16, channels=(4, 8), steps=2, batch_size=4)
    clf = ImageClassifier(JOINT, config).fit(prepare(scans, 16), labels)
    x = prepare(scans[:3], 16)
    assert x.shape == (3, 1, 16, 16, 16)
    proba = clf.predict_proba(x)
    assert proba.shape == (3, len(JOINT))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert clf.features(x).shape == (3, 16)  # average- and max-pooled channels[-1]
    assert all(p in JOINT for p in clf.predict(x))


def test_balanced_order_draws_rare_classes_as_often_as_common_ones() -> None:
    labels = torch.tensor([0] * 300 + [1] * 10)
    idx = balanced_order(labels, 4000, torch.Generator().manual_seed(0))
    rare = int((labels[idx] == 1).sum())
    assert 1800 < rare < 2200  # ~50%, against 3% under uniform sampling
    assert set(idx[labels[idx] == 1].tolist()) == set(range(300, 310))


def test_bad_inputs_raise_input_error() -> None:
    clf = ImageClassifier(["a", "b"], ClassifierConfig(in_size=16, channels=(4,)))
    with pytest.raises(InputError, match="expected \\(N, 1, 16, 16\\)"):
        clf.predict(torch.zeros(2, 1, 8, 8))
    with pytest.raises(InputError, match="unknown labels \\['c'\\]"):
        clf.fit(torch.zeros(2, 1, 16, 16), ["a", "c"])
    with pytest.raises(InputError, match="sample_weight"):
        clf.fit(torch.zeros(2, 1, 16, 16), ["a", "b"], sample_weight=[1.0])
    with pytest.raises(InputError, match="distinct"):
        ImageClassifier(["a", "a"], ClassifierConfig())
    with pytest.raises(InputError, match="spatial_dims"):
        ClassifierConfig(spatial_dims=4)
    with pytest.raises(InputError, match="in_size=4"):
        ClassifierConfig(in_size=4, channels=(4, 8, 16))


def test_blur_augmentation_smooths_batches_and_is_seeded() -> None:
    from medsynth.evaluation.classifier import _blur

    x = prepare(_phantoms(range(4), size=32)[0], 32)

    def roughness(t: torch.Tensor) -> float:  # mean absolute difference of neighbouring pixels
        return float((t[..., 1:] - t[..., :-1]).abs().mean())

    outs = [_blur(x, 1.5, torch.Generator().manual_seed(s)) for s in range(20)]
    blurred = [o for o in outs if not torch.equal(o, x)]
    assert 8 <= len(blurred) <= 19  # p = 0.7 of a blur per batch
    assert all(roughness(o) < 0.9 * roughness(x) for o in blurred)
    assert min(roughness(o) for o in blurred) < 0.5 * roughness(x)
    assert torch.equal(_blur(x, 1.5, torch.Generator().manual_seed(3)), outs[3])
    # the texture augmentation changes what is learnt; 0 is off
    plain, smooth = _tiny_fit(0).net.state_dict(), _tiny_fit(0, blur_sigma=1.5).net.state_dict()
    assert any(not torch.equal(plain[k], smooth[k]) for k in plain)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="blur_sigma"):
            ClassifierConfig(blur_sigma=bad)
