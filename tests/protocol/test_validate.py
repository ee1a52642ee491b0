"""`medsynth validate`: malformed protocols of many kinds -> one line per problem, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from medsynth.cli import main
from medsynth.protocol.schema import FORMAT_NAMES, MAX_GUIDANCE, SAMPLER_NAMES, parse_protocol_text


def _validate(path, capsys) -> tuple[int, list[str], str]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def _assert_clean_failure(code: int, lines: list[str], tmp_path) -> None:
    assert code == 2
    assert lines, "expected at least one error line"
    assert all(line.startswith("medsynth: error: ") for line in lines), lines
    assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "out").exists(), "validate must not write anything"


# (override of the quota list / top-level keys, expected field path, expected words in the line)
SHAPE_CASES = [
    ({"quotas": [{"pathology": "normal", "modality": "CT", "count": "12"}]}, "quotas[0].count", "whole number"),
    ({"quotas": [{"pathology": "normal", "modality": "CT", "count": 12.5}]}, "quotas[0].count", "12.5"),
    ({"quotas": [{"pathology": "normal", "modality": "CT", "count": True}]}, "quotas[0].count", "True"),
    ({"quotas": [{"pathology": "normal", "modality": "CT", "count": 0}]}, "quotas[0].count", "> 0"),
    ({"quotas": [{"pathology": "normal", "modality": "CT", "count": -3}]}, "quotas[0].count", "-3"),
    ({"quotas": [{"pathology": "normal", "modality": "CT", "count": 10**9}]}, "quotas[0].count", "<= 1000000"),
    ({"quotas": [{"pathology": "normal", "modality": "CT"}]}, "quotas[0].count", "missing"),
    ({"quotas": None, "balance": {"dataset": "x.csv", "target": "most"}}, "balance.target", "'majority'"),
    ({"quotas": [{"pathology": "normal", "modality": "CT", "cout": 2}]}, "quotas[0].cout", "did you mean 'count'"),
    ({"quotas": []}, "quotas", "at least 1"),
    ({"quotas": "normal"}, "quotas", "expected a list"),
    ({"quota": [{"pathology": "normal", "modality": "CT", "count": 1}]}, "quota", "did you mean 'quotas'"),
    ({"sampler": {"method": "euler"}}, "sampler.method", "'dpm++'"),
    ({"sampler": {"steps": 0}}, "sampler.steps", ">= 1"),
    ({"sampler": {"steps": 100000}}, "sampler.steps", "<= 1000"),
    ({"sampler": {"guidance_scale": 99}}, "sampler.guidance_scale", f"<= {MAX_GUIDANCE}"),
    ({"sampler": {"guidance_scale": "high"}}, "sampler.guidance_scale", "expected a number"),
    ({"sampler": {"batch_size": 2.0}}, "sampler.batch_size", "whole number"),
    ({"output": {"formats": ["jpeg"]}}, "output.formats[0]", "'nifti'"),
    ({"output": {"formats": ["nifti", "nifti"]}}, "output", "twice"),
    ({"privacy": {"on_flag": False}}, "privacy.on_flag", "quote the value"),
    ({"privacy": {"quantile": 1.5}}, "privacy.quantile", "< 1.0"),
    ({"seed": "7"}, "seed", "whole number"),
    ({"seed": None}, "seed", "missing"),
    ({"name": "my study!"}, "name", "letters, digits"),
]


@pytest.mark.parametrize("override, where, words", SHAPE_CASES)
def test_schema_errors_name_field_value_and_allowed(
    override, where, words, model_dirs, make_protocol, write_protocol, tmp_path, capsys
):
    path = write_protocol(make_protocol(model_dirs["2d"], **override))
    code, lines, _ = _validate(path, capsys)
    _assert_clean_failure(code, lines, tmp_path)
    hits = [line for line in lines if f": {where}:" in line]
    assert hits, f"no line names {where}: {lines}"
    assert words in hits[0], hits[0]
    assert str(path) in hits[0]


RAW_CASES = [
    ("", "is empty"),
    ("# only a comment\n", "no YAML content"),
    ("- a\n- b\n", "got a list"),
    ("just words\n", "got a str"),
    ("protocol: 1\nname: [unclosed\n", "line 3"),
    ("protocol: 2\nname: x\n", "known: 1"),
    ("name: x\nmodel: y\n", "protocol: 1"),
    ("protocol: 1\nname: a\nname: b\n", "given twice"),
    ("protocol: '1'\n", "'1' is not a schema version"),
]


@pytest.mark.parametrize("text, words", RAW_CASES)
def test_malformed_files(text, words, write_protocol, tmp_path, capsys):
    code, lines, _ = _validate(write_protocol(text), capsys)
    _assert_clean_failure(code, lines, tmp_path)
    assert len(lines) == 1 and words in lines[0], lines


def test_yaml_tags_never_execute(write_protocol, tmp_path, capsys):
    marker = tmp_path / "pwned"
    text = (
        "protocol: 1\n"
        f"name: !!python/object/apply:os.system ['touch {marker}']\n"
        f"model: !!python/object/apply:pathlib.Path ['{marker}']\n"
    )
    code, lines, _ = _validate(write_protocol(text), capsys)
    _assert_clean_failure(code, lines, tmp_path)
    assert "tags are not allowed" in lines[0]
    assert not marker.exists()


def test_binary_missing_and_folder(tmp_path, capsys):
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    for target, words in [
        (junk, "not UTF-8"),
        (tmp_path / "nope.yaml", "no such protocol file"),
        (tmp_path, "is a folder"),
    ]:
        code, lines, _ = _validate(target, capsys)
        assert code == 2 and len(lines) == 1 and words in lines[0], lines
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"\x00\x01")  # UTF-8, but not YAML: the error has no line to point at
    code, lines, _ = _validate(nul, capsys)
    assert code == 2 and f"{nul}: not valid protocol YAML: unacceptable character" in lines[0], lines


def test_all_errors_are_collected(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    doc = make_protocol(
        model_dirs["2d"],
        quotas=[
            {"pathology": "normal", "modality": "CT", "count": "3"},
            {"pathology": "nodule", "modality": "CT", "count": 2.5, "guidance": 4},
        ],
        sampler={"method": "heun", "steps": 2},
    )
    code, lines, _ = _validate(write_protocol(doc), capsys)
    _assert_clean_failure(code, lines, tmp_path)
    wheres = {line.split(": ")[3] for line in lines}
    assert {"quotas[0].count", "quotas[1].count", "quotas[1].guidance", "sampler.method"} <= wheres, lines


SEMANTIC_CASES = [
    # (model key, overrides, field path, words)
    (
        "2d",
        {"quotas": [{"pathology": "nodul", "modality": "CT", "count": 1}]},
        "quotas[0].pathology",
        "did you mean 'nodule'",
    ),
    (
        "2d",
        {"quotas": [{"pathology": "nodule|effusion", "modality": "CT", "count": 1}]},
        "quotas[0].pathology",
        "'effusion'",
    ),
    (
        "2d",
        {"quotas": [{"pathology": "nodule", "modality": "PET", "count": 1}]},
        "quotas[0].modality",
        "allowed: CT, MR",
    ),
    ("2d", {"sampler": {"method": "rflow", "steps": 2}}, "sampler.method", "allowed: ddpm, ddim, dpm++"),
    ("rflow", {"sampler": {"method": "ddim", "steps": 2}}, "sampler.method", "allowed: rflow"),
    (
        "2d",
        {"quotas": [{"pathology": "nodule", "modality": "CT", "count": 1, "method": "rflow"}]},
        "quotas[0].method",
        "trained as 'ddpm'",
    ),
    ("3d", {"output": {"formats": ["nifti", "png"]}}, "output.formats", "only for 2D"),
    ("2d", {"privacy": {"gate": True}}, "privacy.gate", "medsynth privacy-index"),
    (
        "2d",
        {"quotas": [{"pathology": "nodule", "modality": "CT", "count": 1, "extend": {"sources": ["missing.nii.gz"]}}]},
        "quotas[0].extend.sources",
        "missing.nii.gz",
    ),
    ("2d", {"quotas": None, "balance": {"dataset": "nope.csv", "target": 5}}, "balance.dataset", "nope.csv"),
]


@pytest.mark.parametrize("model, override, where, words", SEMANTIC_CASES)
def test_errors_against_the_model_and_data(
    model, override, where, words, model_dirs, make_protocol, write_protocol, tmp_path, capsys
):
    code, lines, _ = _validate(write_protocol(make_protocol(model_dirs[model], **override)), capsys)
    _assert_clean_failure(code, lines, tmp_path)
    hits = [line for line in lines if f": {where}:" in line]
    assert hits and words in hits[0], lines


@pytest.mark.parametrize(
    "model, words",
    [
        ("does-not-exist", "no such model directory"),
        ("builtin:phantom-9d", "unknown built-in model"),
        ("weights.pt", "pickle"),
    ],
)
def test_missing_or_unsafe_model(model, words, make_protocol, write_protocol, tmp_path, capsys):
    (tmp_path / "weights.pt").write_bytes(b"not really")
    code, lines, _ = _validate(write_protocol(make_protocol(model)), capsys)
    _assert_clean_failure(code, lines, tmp_path)
    assert len(lines) == 1 and ": model: " in lines[0] and words in lines[0], lines


def test_valid_protocol_reports_the_plan(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    code, lines, out = _validate(write_protocol(make_protocol(model_dirs["2d"])), capsys)
    assert code == 0 and not lines
    assert "OK" in out and "5 cases in 3 batches" in out and "privacy gate OFF" in out
    assert not (tmp_path / "out").exists()


def test_unwritten_guidance_is_the_models_default(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_dirs["2d"], model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "default_guidance_scale": 5.5}))
    doc = make_protocol(model)
    del doc["sampler"]["guidance_scale"]
    code, lines, out = _validate(write_protocol(doc), capsys)
    assert code == 0 and not lines, lines
    assert "quotas[0]: 3 x normal/CT, ddim 2 steps, guidance 5.5" in out  # the model's
    assert "quotas[1]: 2 x nodule/MR, ddim 2 steps, guidance 4" in out  # the quota's own


def test_protocol_schema_command_prints_the_json_schema(capsys):
    assert main(["protocol-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"protocol", "name", "model", "seed"}
    quota = schema["$defs"]["QuotaSpec"]
    assert quota["additionalProperties"] is False and quota["properties"]["count"]["exclusiveMinimum"] == 0


def test_names_match_the_rest_of_medsynth():
    from medsynth.io import FORMATS
    from medsynth.models.ldm import GUIDANCE_RANGE
    from medsynth.sampling.samplers import SAMPLERS

    assert set(SAMPLER_NAMES) == set(SAMPLERS)
    assert set(FORMAT_NAMES) == set(FORMATS)
    assert GUIDANCE_RANGE[1] == MAX_GUIDANCE


def test_docstring_example_parses():
    p = parse_protocol_text("protocol: 1\nname: d\nmodel: m\nseed: 1\nquotas: [{pathology: a, modality: CT, count: 2}]")
    assert p.quotas[0].count == 2 and p.privacy.gate is True and p.sampler.method is None
