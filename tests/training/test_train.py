"""End-to-end training on tiny phantoms (2D and 3D), exact resume, and the loop's pieces."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medsynth.errors import InputError
from medsynth.models.artifact import load_model
from medsynth.training import pipeline
from medsynth.training.config import parse_config
from medsynth.training.distributed import BatchOrder, DistContext, balanced_items, class_keys
from medsynth.training.loop import EarlyStopping, ema_decay_at, lr_factor, make_ema


def _weights(model_dir) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("autoencoder", "unet", "conditioner"):
        out.update({f"{name}.{k}": v for k, v in load_file(model_dir / f"{name}.safetensors").items()})
    return out


def test_train_2d_writes_a_loadable_model(phantoms_2d, tiny_cfg, tmp_path, capsys):
    cfg = parse_config(
        tiny_cfg(
            phantoms_2d,
            tmp_path,
            default_guidance_scale=4.5,
            stage2={"scheduler": {"kind": "ddpm", "schedule": "cosine", "prediction_type": "v_prediction"}},
        )
    )
    out = pipeline.train(cfg, progress=False, command="medsynth train tiny.yaml")
    model = load_model(out)
    assert model.spatial_dims == 2 and model.latent_shape == (2, 8, 8)
    assert model.pathologies == ["effusion", "mass", "nodule", "normal"] and model.modalities == ["CT", "MR"]
    conf = json.loads((out / "config.json").read_text())
    assert conf["scheduler"]["prediction_type"] == "v_prediction" and conf["scheduler"]["schedule"] == "cosine"
    assert sum(conf["fingerprint"]["counts"].values()) == 64  # the CSV's train split: 8 of 10 per class
    assert conf["preprocessing"]["intensity"]["CT"] == {"kind": "linear", "lo": -1000.0, "hi": 1000.0}
    assert 0.01 < conf["scale_factor"] < 100
    assert conf["default_guidance_scale"] == 4.5 and model.config.default_guidance_scale == 4.5
    card = (out / "model_card.md").read_text()
    assert "`medsynth train tiny.yaml`" in card and conf["fingerprint"]["file_list_sha256"] in card
    assert "| nodule/CT | 8 |" in card
    # No identifier or local path of the training data leaves with the model.
    assert "phantom-s" not in card + json.dumps(conf) and str(phantoms_2d.parent) not in card + json.dumps(conf)
    previews = sorted(p.name for p in (tmp_path / "work" / "previews").iterdir())
    assert previews == ["stage1-step0000004.png", "stage2-step0000004.png"]
    ckpt = tmp_path / "work" / "checkpoints" / "stage2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "state.safetensors"]
    log = capsys.readouterr().out
    assert "[stage1] step 4/4" in log and "g_adv=" in log and "[stage2] step 4 val_loss=" in log


def test_train_3d_from_generated_phantoms_with_rflow(tiny_cfg, tmp_path):
    cfg = parse_config(
        tiny_cfg(
            None,
            tmp_path,
            data={
                "phantoms": {
                    "dim": 3,
                    "count": 16,
                    "seed": 1,
                    "size": 32,
                    "pathologies": ["normal", "nodule", "mass", "effusion"],
                }
            },
            preprocessing={"size": [16, 16, 16]},
            stage1={"patch_size": [8, 8, 8], "adv_weight": 0.0, "batch_size": 2},
            stage2={"batch_size": 2, "scheduler": {"kind": "rflow", "num_train_timesteps": 100}},
        )
    )
    out = pipeline.train(cfg, progress=False)
    model = load_model(out)
    assert model.spatial_dims == 3 and model.latent_shape == (2, 8, 8, 8)
    assert model.config.scheduler["kind"] == "rflow"
    assert (tmp_path / "work" / "data" / "labels.csv").is_file()


def _interrupt_at(monkeypatch, builder: str, at_step: int) -> None:
    """Make the stage built by ``pipeline.<builder>`` crash when it reaches ``at_step``."""
    original = getattr(pipeline, builder)

    def patched(*args, **kwargs):
        built = original(*args, **kwargs)
        spec = built[0] if isinstance(built, tuple) else built
        step_fn = spec.train_step

        def crashing(step: int):
            if step == at_step:
                raise KeyboardInterrupt("simulated crash")
            return step_fn(step)

        spec.train_step = crashing
        return built

    monkeypatch.setattr(pipeline, builder, patched)


@pytest.mark.parametrize("builder", ["build_stage1", "build_stage2"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    phantoms_2d, tiny_cfg, tmp_path, monkeypatch, builder, straight_run
):
    straight = straight_run
    cfg_b = parse_config(tiny_cfg(phantoms_2d, tmp_path / "b"))
    with monkeypatch.context() as m:
        _interrupt_at(m, builder, at_step=2)
        with pytest.raises(KeyboardInterrupt):
            pipeline.train(cfg_b, progress=False)
    assert not (tmp_path / "b" / "model").exists()
    meta = json.loads((tmp_path / "b" / "work" / "checkpoints" / builder[-6:] / "state.json").read_text())
    assert meta["step"] == 2 and not meta["complete"]
    resumed = pipeline.train(cfg_b, progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_checkpoint_from_other_settings_is_refused(phantoms_2d, tiny_cfg, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt_at(m, "build_stage1", at_step=2)
        with pytest.raises(KeyboardInterrupt):
            pipeline.train(parse_config(tiny_cfg(phantoms_2d, tmp_path)), progress=False)
    changed = parse_config(tiny_cfg(phantoms_2d, tmp_path, stage1={"lr": 1e-3}))
    with pytest.raises(InputError, match="checkpoint was made with different training settings"):
        pipeline.train(changed, progress=False)


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_early_stopping_counts_validations_without_improvement():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert [es.update(v) for v in (1.0, 0.9, 0.895, 0.95, 0.5)] == [False, False, False, True, False]


def test_batch_order_is_a_function_of_step_and_shards_ranks():
    r0 = BatchOrder(20, 4, 1, DistContext(rank=0, world_size=2), seed=5)
    r1 = BatchOrder(20, 4, 1, DistContext(rank=1, world_size=2), seed=5)
    again = BatchOrder(20, 4, 1, DistContext(rank=0, world_size=2), seed=5)
    assert r0.per_epoch == 2
    epoch0 = r0(0, 0) + r0(1, 0) + r1(0, 0) + r1(1, 0)
    assert sorted(epoch0) == sorted(set(epoch0)) and len(epoch0) == 16  # disjoint shards
    assert again(3, 0) == r0(3, 0) and r0(2, 0) != r0(0, 0)  # new permutation each epoch


def test_balanced_batches_show_a_rare_class_as_often_as_a_common_one():
    classes = class_keys(["normal"] * 30 + ["nodule"] * 3, ["CT"] * 33)
    order = BatchOrder(33, 6, 1, DistContext(), seed=0, items=balanced_items(classes))
    epoch = [i for step in range(order.per_epoch) for i in order(step, 0)]
    rare = [i for i in epoch if i >= 30]
    assert len(epoch) == 60 and len(rare) == 30  # 50%, not 3/33
    assert sorted(set(rare)) == [30, 31, 32] and all(rare.count(i) == 10 for i in (30, 31, 32))
    plain = BatchOrder(33, 6, 1, DistContext(), seed=0)
    assert sum(i >= 30 for step in range(plain.per_epoch) for i in plain(step, 0)) <= 3


def test_ema_warms_up_then_follows_the_decay():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(1000, 0.999) == pytest.approx(1001 / 1010)
    assert ema_decay_at(20000, 0.999) == 0.999
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = make_ema(net, decay=0.999)
    ema.update_parameters(net)  # first update copies
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # n=1: decay 2/11
    assert float(ema.module.weight.detach()) == pytest.approx(1 - 2 / 11)
