"""``medsynth finetune`` on tiny bases (2D and 3D): new tokens, methods, adapter dirs, compose, merge, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medsynth.adapters import store
from medsynth.adapters import train as ft
from medsynth.adapters.config import parse_config
from medsynth.cli.main import main
from medsynth.data.phantoms import phantom_dataset
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.models.artifact import load_model, model_sha256, save_model, verify_model_dir
from medsynth.models.conditioning import Conditioner
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.sampling import Synthesizer

BASE_PATHOLOGIES = ("effusion", "mass", "nodule", "normal")
NEW = "cavity"  # the tiny data's "mass" scans, relabelled: a label the base has never seen


def _tiny_base(dims: int, out: Path) -> Path:
    pre = Preprocessing(
        dims,
        (16,) * dims,
        (350 / 16,) * dims,
        {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1100}},
        slice_thickness=5.0,
    )
    cfg = ModelConfig(
        spatial_dims=dims,
        in_channels=1,
        pathologies=list(BASE_PATHOLOGIES),
        modalities=["CT", "MR"],
        autoencoder=dict(
            channels=[8, 8],
            latent_channels=2,
            num_res_blocks=1,
            attention_levels=[False, False],
            norm_num_groups=4,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        ),
        unet=dict(
            channels=[8, 16], attention_levels=[False, True], num_res_blocks=1, norm_num_groups=4, num_head_channels=8
        ),
        cond_dim=8,
        preprocessing=pre.to_dict(),
        scale_factor=0.7,
        name=f"tiny-{dims}d",
    )
    torch.manual_seed(dims)
    model = LatentDiffusionModel(cfg)
    with torch.no_grad():  # MONAI zero-initialises the output conv: an untrained UNet passes no gradient back
        for p in model.unet.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return save_model(model, out)


def _finetune_csv(dims: int, out: Path) -> Path:
    """Tiny phantoms, the base's labels only, with 'mass' renamed to the new label."""
    labels = phantom_dataset(out, dim=dims, count=16, seed=5, size=32)
    rows = [r for r in csv.DictReader(labels.open()) if r["pathology"] in BASE_PATHOLOGIES]
    for r in rows:
        r["pathology"] = r["pathology"].replace("mass", NEW)
        r.pop("split", None)  # fine-tuning splits by data.test_fraction (the privacy holdout)
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return labels


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """dims -> (base model dir, fine-tuning labels.csv)."""
    root = tmp_path_factory.mktemp("ft-bases")
    return {d: (_tiny_base(d, root / f"base{d}"), _finetune_csv(d, root / f"data{d}")) for d in (2, 3)}


def _cfg(base: Path, labels: Path, out: Path, **over) -> dict:
    cfg = {
        "base": str(base),
        "data": {"labels": str(labels)},
        "method": "lora",
        "new_pathologies": {NEW: {"init_from": "mass"}},
        "lora": {"rank": 2, "alpha": 2},
        "prior_preservation": {"samples_per_class": 1, "sampling_steps": 2},
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "lr": 1e-2,
        "ema_decay": 0.9,
        "output_dir": str(out / "adapter"),
        "checkpoint_every": 2,
        "log_every": 2,
        "threads": 1,
        "build_privacy_index": False,
    }
    cfg.update(over)
    return cfg


def _run(base: Path, labels: Path, out: Path, **over) -> Path:
    return ft.finetune(parse_config(_cfg(base, labels, out, **over)), progress=False)


def _sample(model, pathology: str, modality: str = "CT") -> np.ndarray:
    synth = Synthesizer(model)
    scans = synth(pathology=pathology, modality=modality, num_samples=1, num_inference_steps=3, seed=7)
    return scans[0].array


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_lora_learns_a_new_token_keeps_the_old_ones_and_composes_like_its_merge(bases, tmp_path, dims):
    base_dir, labels = bases[dims]
    out = _run(base_dir, labels, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter.safetensors",
        "config.json",
        "embeddings.safetensors",
        "model_card.md",
    ]
    conf = json.loads((out / "config.json").read_text())
    assert conf["adapter"]["base"]["sha256"] == model_sha256(base_dir) and conf["adapter"]["method"] == "lora"
    assert set(conf["files"]) == {"adapter.safetensors", "embeddings.safetensors"}
    verify_model_dir(out)
    base, model = load_model(base_dir), load_model(out)
    assert model.pathologies == [*BASE_PATHOLOGIES, NEW] and model.spatial_dims == dims
    old = base.conditioner.pathology_embedding.weight
    rows = model.conditioner.pathology_embedding.weight
    assert torch.equal(rows[: len(old)], old), "existing token rows (null included) must not change"
    assert torch.equal(model.conditioner.modality_embedding.weight, base.conditioner.modality_embedding.weight)
    assert not torch.equal(rows[-1], old[1 + BASE_PATHOLOGIES.index("mass")]), "the new token was not trained"
    assert all(torch.equal(v, model.autoencoder.state_dict()[k]) for k, v in base.autoencoder.state_dict().items())
    # The LoRA update changed the UNet; merged, it gives the composed model's samples to float rounding.
    composed = _sample(model, NEW)
    assert not np.array_equal(_sample(model, "nodule"), _sample(base, "nodule"))
    merged_dir = store.merge(out, tmp_path / "merged")
    merged = load_model(merged_dir)
    assert merged.config.adapter is None and not any("lora" in k for k in merged.unet.state_dict())
    np.testing.assert_allclose(_sample(merged, NEW), composed, rtol=0, atol=1e-3 * np.abs(composed).max())
    # Scale 0: the base's samples bit for bit (for every class the base knows).
    assert np.array_equal(_sample(load_model(out, scale=0.0), "nodule", "MR"), _sample(base, "nodule", "MR"))
    # The prior samples were generated once into the work folder, one per base class.
    prior = load_file(tmp_path / "adapter.work" / "prior" / "latents.safetensors")["z"]
    assert prior.shape == (len(BASE_PATHOLOGIES) * 2, *base.latent_shape)


def test_embedding_method_trains_only_the_new_rows(bases, tmp_path):
    base_dir, labels = bases[2]
    out = _run(base_dir, labels, tmp_path, method="embedding", prior_preservation=None)
    assert not (out / "adapter.safetensors").exists()
    emb = load_file(out / "embeddings.safetensors")
    assert set(emb) == {"pathology"} and emb["pathology"].shape == (1, 8)
    base, model = load_model(base_dir), load_model(out)
    for k, v in base.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[k], v), k
    assert not torch.equal(
        model.conditioner.pathology_embedding.weight[-1], base.conditioner.pathology_embedding.weight[2]
    )


def test_new_rows_move_at_their_own_embedding_lr(bases, tmp_path):
    """The new rows' rate is ``embedding_lr``, not the UNet's ``lr``: Adam moves a coordinate by
    about the rate per step, so four steps at 1e-5 move the row by well under 1e-3, and four at
    1e-1 by far more (the UNet's lr, 1e-2, is the same in both runs)."""
    base_dir, labels = bases[2]
    start = load_model(base_dir).conditioner.pathology_embedding.weight[1 + BASE_PATHOLOGIES.index("mass")].detach()
    moved = {}
    for elr in (1e-5, 1e-1):
        out = _run(base_dir, labels, tmp_path / str(elr), method="embedding", prior_preservation=None, embedding_lr=elr)
        moved[elr] = float((load_file(out / "embeddings.safetensors")["pathology"][0] - start).abs().max())
    assert moved[1e-5] <= 4 * 2e-5, moved
    assert moved[1e-1] > 100 * moved[1e-5] and moved[1e-1] > 4 * 1e-2, moved


def test_full_method_in_3d_stores_the_unet_and_scales_between_base_and_tuned(bases, tmp_path):
    base_dir, labels = bases[3]
    out = _run(base_dir, labels, tmp_path, method="full", new_pathologies={NEW: {"init_from": "mean"}})
    tuned = load_file(out / "adapter.safetensors")
    base, model = load_model(base_dir), load_model(out)
    assert set(tuned) == set(base.unet.state_dict())
    half = load_model(out, scale=0.5).unet.state_dict()
    k = "out.2.conv.weight"
    torch.testing.assert_close(half[k], (base.unet.state_dict()[k] + model.unet.state_dict()[k]) / 2)
    assert np.array_equal(_sample(load_model(out, scale=0), "mass"), _sample(base, "mass"))


def _interrupt(monkeypatch, at_step: int) -> None:
    original = ft.build_stage2

    def patched(*args, **kwargs):
        spec, ema = original(*args, **kwargs)
        step_fn = spec.train_step

        def crashing(step: int):
            if step == at_step:
                raise KeyboardInterrupt("simulated kill")
            return step_fn(step)

        spec.train_step = crashing
        return spec, ema

    monkeypatch.setattr(ft, "build_stage2", patched)


def test_resume_after_an_interruption_is_exact(bases, tmp_path, monkeypatch):
    base_dir, labels = bases[2]
    straight = _run(base_dir, labels, tmp_path / "a")
    with monkeypatch.context() as m:
        _interrupt(m, at_step=3)
        with pytest.raises(KeyboardInterrupt):
            _run(base_dir, labels, tmp_path / "b")
    assert not (tmp_path / "b" / "adapter").exists()
    meta = json.loads((tmp_path / "b" / "adapter.work" / "checkpoints" / "finetune" / "state.json").read_text())
    assert meta["step"] == 2 and not meta["complete"]
    resumed = _run(base_dir, labels, tmp_path / "b")
    for name in ("adapter.safetensors", "embeddings.safetensors"):
        # Tensor bytes, not file bytes: safetensors writes its metadata map in no fixed order.
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys() and len(a)
        assert all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a), name


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_a_gated_lora_changes_only_the_new_class_and_cannot_be_merged(bases, tmp_path, dims):
    """lora.gate: every old class (with guidance, so its null rows too) samples as the base's bit for
    bit, while the new class gets the update; merging would give it to every class, so it is refused."""
    base_dir, labels = bases[dims]
    out = _run(base_dir, labels, tmp_path, prior_preservation=None, lora={"rank": 2, "alpha": 2, "gate": True})
    assert json.loads((out / "config.json").read_text())["adapter"]["lora"]["gate"] is True
    base, model, off = load_model(base_dir), load_model(out), load_model(out, scale=0.0)
    for p, m in (("nodule", "CT"), ("mass", "MR"), ("normal", "CT")):
        assert np.array_equal(_sample(model, p, m), _sample(base, p, m)), (p, m)
    assert not np.array_equal(_sample(model, NEW), _sample(off, NEW)), "the gate never opened for the new token"
    with pytest.raises(InputError, match="gated to the new tokens"):
        store.merge(out, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_the_gate_reads_new_labels_from_the_context():
    from medsynth.adapters.gate import TokenGate

    torch.manual_seed(0)
    cond = Conditioner([*BASE_PATHOLOGIES, NEW], ["CT", "MR", "US"], 16)
    gate = TokenGate(cond, len(BASE_PATHOLOGIES) + 1, 3)  # base: 4 pathologies + null, 2 modalities + null
    ctx = cond([NEW, "mass", ["mass", NEW], ["nodule", "effusion"], "normal"], ["CT", "MR", "MR", "CT", "US"])
    assert gate.from_context(ctx).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]  # US is a new modality
    dropped = cond([NEW], ["CT"], drop_pathology=torch.tensor([True]))
    assert gate.from_context(dropped).tolist() == [0.0]  # the null row: the base's unconditional pass


def test_a_gated_adapter_whose_new_row_never_left_its_copy_is_refused_at_load(bases, tmp_path):
    """At embedding_lr 1e-9 the new row stays its init_from copy: the gate would open for that old
    class too, so loading names the problem instead of changing an old class silently."""
    base_dir, labels = bases[2]
    out = _run(base_dir, labels, tmp_path, prior_preservation=None, embedding_lr=1e-9, lora={"gate": True})
    with pytest.raises(InputError, match="cannot tell the new pathology rows from the old ones") as err:
        load_model(out)
    assert "\n" not in str(err.value) and "embedding_lr" in str(err.value)


def test_gate_settings_that_cannot_work_are_refused(bases, tmp_path):
    base_dir, labels = bases[2]
    for over, words in (
        ({"lora": {"gate": True}}, "nothing to keep"),  # _cfg has prior preservation
        ({"lora": {"gate": True}, "prior_preservation": None, "new_pathologies": {}}, "needs method lora and new"),
    ):
        with pytest.raises(InputError, match=words):
            parse_config(_cfg(base_dir, labels, tmp_path, **over))


def test_a_base_with_another_digest_is_refused(bases, tmp_path):
    base_dir, labels = bases[2]
    copy = tmp_path / "base"
    shutil.copytree(base_dir, copy)
    out = _run(copy, labels, tmp_path, prior_preservation=None)
    want = model_sha256(copy)
    model = load_model(copy)
    with torch.no_grad():
        model.unet.out[2].conv.weight.add_(1.0)
    save_model(model, copy)  # the base changed under the adapter
    with pytest.raises(InputError) as err:
        load_model(out)
    msg = str(err.value)
    assert "\n" not in msg and want in msg and model_sha256(copy) in msg


def test_cli_finetune_reports_the_adapter_size_and_refuses_an_unknown_key(bases, tmp_path, capsys):
    base_dir, labels = bases[2]
    good = tmp_path / "ft.yaml"
    good.write_text(yaml.safe_dump(_cfg(base_dir, labels, tmp_path, method="embedding", prior_preservation=None)))
    assert main(["finetune", str(good), "--no-progress"]) == 0
    size = store.adapter_bytes(tmp_path / "adapter")
    assert f"({size:,} bytes of weights)" in capsys.readouterr().out and 0 < size < 10_000
    assert f"Adapter weights: {size:,} bytes" in (tmp_path / "adapter" / "model_card.md").read_text()
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    assert load_model(tmp_path / "merged").pathologies[-1] == NEW
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_cfg(base_dir, labels, tmp_path), "lora": {"rank": 2, "alhpa": 2}}))
    assert main(["finetune", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "alhpa" in err and "medsynth: error:" in err


def test_config_refuses_labels_outside_the_vocabularies_before_any_work(bases, tmp_path):
    base_dir, labels = bases[2]
    with pytest.raises(InputError, match=f"pathology '{NEW}' is neither a base label"):
        _run(base_dir, labels, tmp_path, new_pathologies={})
    assert not (tmp_path / "adapter.work").exists() and not (tmp_path / "adapter").exists()
    with pytest.raises(InputError, match="method 'embedding' trains only new token embeddings"):
        parse_config(_cfg(base_dir, labels, tmp_path, method="embedding", new_pathologies={}))


def test_new_tokens_start_from_a_named_token_or_the_mean():
    torch.manual_seed(0)
    c = Conditioner(["normal", "nodule"], ["CT"], 4)
    e = c.extended({"cavity": "nodule", "other": "mean"}, {"mr": "CT"})
    assert e.pathologies == ["normal", "nodule", "cavity", "other"] and e.modalities == ["CT", "MR"]
    w, old = e.pathology_embedding.weight, c.pathology_embedding.weight
    assert torch.equal(w[:3], old) and torch.equal(w[3], old[2])
    torch.testing.assert_close(w[4], old[1:].mean(0))
    assert torch.equal(e.modality_embedding.weight[2], c.modality_embedding.weight[1])
    with pytest.raises(InputError, match="already in the base vocabulary"):
        c.extended({"nodule": "mean"})
    with pytest.raises(InputError, match="is not a base label"):
        c.extended({"cavity": "mass"})


def _on_grid(catalog, i: int, model_dir: Path):
    pre = load_model(model_dir).preprocessing
    return pre.from_model(pre.to_model(catalog.load(i)), catalog.records[i].modality)


def test_privacy_index_of_the_finetuning_scans_and_the_gate_checks_it_beside_the_bases(bases, tmp_path):
    from medsynth.data.catalog import Catalog
    from medsynth.privacy import build_index_for_model
    from medsynth.protocol.gate import Gate
    from medsynth.protocol.schema import PrivacySpec

    base_dir, labels = bases[2]
    base = tmp_path / "base"
    shutil.copytree(base_dir, base)
    base_data = Catalog.from_csv(_finetune_csv(2, tmp_path / "base-data"))
    base_parts = base_data.split({"train": 0.75, "test": 0.25}, seed=0)
    build_index_for_model(base, base_parts["train"], base_parts["test"])
    out = _run(base, labels, tmp_path, prior_preservation=None, build_privacy_index=True)
    assert (out / "privacy" / "index.json").is_file() and any(
        k.startswith("privacy/") for k in json.loads((out / "config.json").read_text())["files"]
    )
    verify_model_dir(out)
    ft_data = Catalog.from_csv(labels)
    ft_train = ft_data.split({"train": 0.8, "test": 0.2}, seed=0)["train"]  # the split finetune made (same seed)
    gate = Gate(out, PrivacySpec())
    assert [name for name, _ in gate.extra_indexes] == ["base"]
    copied = gate.check([_on_grid(ft_train, 0, out)], "cavity/CT")[0]
    assert copied["gate"] and not copied["passed"] and copied["index"] in ("model", "base")
    base_scan = gate.check([_on_grid(base_parts["train"], 0, base)], "normal/CT")[0]
    assert not base_scan["passed"], "a copy of a base training scan must be flagged by the base's index"
    merged = store.merge(out, tmp_path / "merged")
    assert (merged / "finetune" / "privacy" / "index.json").is_file() and (merged / "privacy" / "index.json").is_file()
    verify_model_dir(merged)
    mgate = Gate(merged, PrivacySpec())
    assert [name for name, _ in mgate.extra_indexes] == ["finetune"]
    assert not mgate.check([_on_grid(ft_train, 0, out)], "cavity/CT")[0]["passed"]
