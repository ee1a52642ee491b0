"""Training YAML validation: as strict as protocols, one line per problem naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medsynth.cli import main
from medsynth.errors import InputError
from medsynth.training.config import load_config, parse_config


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_relative_paths_resolve_against_the_yaml(tmp_path, tiny_cfg):
    cfg = tiny_cfg(Path("data/labels.csv"), Path("runs"))
    (tmp_path / "sub").mkdir()
    f = _write(tmp_path / "sub" / "c.yaml", cfg)
    loaded = load_config(f)
    assert loaded.data.labels == tmp_path / "sub" / "data" / "labels.csv"
    assert loaded.output_dir == tmp_path / "sub" / "runs" / "model"
    assert loaded.spatial_dims == 2 and loaded.stage2.scheduler.kind == "ddpm"


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda c: c["stage2"].update(shceduler={}), r"c\.yaml: stage2\.shceduler: unknown key"),
        (
            lambda c: c["stage2"].update(scheduler={"schedule": "quadratic"}),
            r"stage2\.scheduler\.schedule: 'quadratic' is not allowed; expected one of 'linear_beta'",
        ),
        (lambda c: c["stage1"].update(steps=0), r"stage1\.steps: 0 is out of range; expected a value >= 1"),
        (lambda c: c.update(data={}), r"data: give exactly one of 'labels'"),
        (lambda c: c["data"].update(phantoms={"dim": 2, "count": 16}), r"data: give exactly one of"),
        (
            lambda c: c["preprocessing"].update(size=[15, 15]),
            r"must be divisible by the autoencoder downsampling factor 2",
        ),
        (lambda c: c["stage1"].update(patch_size=[8]), r"stage1.patch_size \[8\] needs 2 values"),
        # Types are not coerced, as in protocols.
        (lambda c: c["stage2"].update(steps="2"), r"stage2\.steps: expected a whole number .*; got '2'"),
        (lambda c: c["stage1"].update(lr="1e-4"), r"stage1\.lr: expected a number"),
        (lambda c: c.update(build_privacy_index="yes"), r"build_privacy_index: expected true or false"),
        # Shapes and channel counts the networks cannot take, before any stage runs.
        (
            lambda c: c["preprocessing"].update(size=[30, 30]),
            r"latent grid of \[15, 15\], which the UNet's 2 levels cannot halve 1 times: use sizes divisible by 4",
        ),
        (
            lambda c: c["unet"].update(norm_num_groups=5),
            r"unet\.norm_num_groups 5 must divide every entry of unet\.channels",
        ),
        (
            lambda c: c["autoencoder"].update(channels=[6, 16], norm_num_groups=4),
            r"autoencoder\.norm_num_groups 4 must divide every entry of autoencoder\.channels \[6, 16\]; \[6\]",
        ),
        (lambda c: c.update(device="tpu"), r"device: 'tpu' is not allowed; expected one of 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, tiny_cfg, change, expected):
    cfg = tiny_cfg(Path("labels.csv"), tmp_path)
    change(cfg)
    f = _write(tmp_path / "c.yaml", cfg)
    with pytest.raises(InputError, match=expected) as info:
        load_config(f)
    assert "\n" not in str(info.value)


def test_phantom_dim_must_match_the_grid(tmp_path, tiny_cfg):
    cfg = tiny_cfg(None, tmp_path, data={"phantoms": {"dim": 3, "count": 16}})
    with pytest.raises(InputError, match="data.phantoms.dim is 3"):
        parse_config(cfg)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(InputError, match="cannot read the training config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="line 2, column .*: not valid training config YAML"):
        load_config(_write(tmp_path / "bad.yaml", "name: x\n  data: [\n"))
    with pytest.raises(InputError, match="key 'seed' is given twice"):
        load_config(_write(tmp_path / "twice.yaml", "seed: 1\nseed: 2\n"))
    with pytest.raises(InputError, match="expected a mapping"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_fingerprint_ignores_bookkeeping_only(tmp_path, tiny_cfg):
    a = parse_config(tiny_cfg(Path("l.csv"), tmp_path))
    b = parse_config(
        tiny_cfg(Path("l.csv"), tmp_path / "elsewhere", log_every=7, threads=2, default_guidance_scale=5.0)
    )
    c = parse_config(tiny_cfg(Path("l.csv"), tmp_path, stage2={"lr": 1e-3}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_fingerprint_is_the_same_for_one_file_named_two_ways(tmp_path, tiny_cfg):
    # configs/x.yaml -> ../data/l.csv and runs/exp/y.yaml -> ../../data/l.csv are one file: a
    # finished autoencoder must resume from either config.
    for d in ("configs", "runs/exp", "data"):
        (tmp_path / d).mkdir(parents=True)
    a = load_config(_write(tmp_path / "configs" / "x.yaml", tiny_cfg(Path("../data/l.csv"), Path("out"))))
    b = load_config(_write(tmp_path / "runs" / "exp" / "y.yaml", tiny_cfg(Path("../../data/l.csv"), Path("out"))))
    assert a.data.labels == b.data.labels == (tmp_path / "data" / "l.csv").resolve()
    assert a.fingerprint("stage1") == b.fingerprint("stage1") and a.fingerprint() == b.fingerprint()


def test_cli_reports_a_bad_config_on_one_line(tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg(Path("labels.csv"), tmp_path)
    cfg["unet"]["chanels"] = [4]
    code = main(["train", str(_write(tmp_path / "c.yaml", cfg))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medsynth: error: ") and "unet.chanels: unknown key" in err and err.count("\n") == 1


def test_default_guidance_scale_matches_the_model_config():
    from medsynth.models.ldm import DEFAULT_GUIDANCE, GUIDANCE_RANGE
    from medsynth.training.config import TrainConfig

    field = TrainConfig.model_fields["default_guidance_scale"]
    bounds = {type(m).__name__: getattr(m, "ge", getattr(m, "le", None)) for m in field.metadata}
    assert field.default == DEFAULT_GUIDANCE and (bounds["Ge"], bounds["Le"]) == GUIDANCE_RANGE


def test_every_problem_is_named_a_typo_beside_the_missing_key(tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg(Path("labels.csv"), tmp_path)
    cfg["stage1"]["stpes"] = cfg["stage1"].pop("steps")
    cfg["stage2"]["steps"] = "2"
    code = main(["train", str(_write(tmp_path / "c.yaml", cfg))])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and all(line.startswith("medsynth: error: ") for line in lines)
    assert any("stage1.stpes: unknown key 'stpes'" in x and "(did you mean 'steps'?)" in x for x in lines)
    assert any("stage1.steps: a required key is missing" in x for x in lines)
    assert any("stage2.steps: expected a whole number" in x for x in lines) and len(lines) == 3
