"""Verified model directories: config.json's file records, and damaged copies named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsynth.errors import InputError
from medsynth.lesions.model import load_lesion_model, load_mask_bank
from medsynth.models.artifact import (
    WEIGHT_FILES,
    builtin_models,
    load_config,
    load_model,
    model_sha256,
    save_model,
    verify_model_dir,
)
from medsynth.models.verify import FILES_KEY, FileRecord, record_files, record_folder, records, verify_files
from medsynth.privacy.index import PrivacyIndex, load_index_for_model

torch.set_num_threads(1)  # the CI box has 2 shared cores

# file -> the loader that reads it (each checks its own files before reading them)
LOADERS = {
    "unet.safetensors": load_model,
    "autoencoder.safetensors": load_model,
    "conditioner.safetensors": load_model,
    "privacy/index.safetensors": load_index_for_model,
    "privacy/index.json": load_index_for_model,
    "lesion/config.json": load_lesion_model,
    "lesion/lesion.safetensors": load_lesion_model,
    "lesion/masks.safetensors": load_mask_bank,
    "lesion/privacy/index.safetensors": load_lesion_model,
}


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _flip(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _strip_records(model_dir: Path) -> None:
    raw = json.loads((model_dir / "config.json").read_text())
    raw.pop(FILES_KEY, None)
    (model_dir / "config.json").write_text(json.dumps(raw, indent=2))


def test_the_writers_record_every_weight_and_index_file(full_model_dir):
    table = records(full_model_dir)
    assert sorted(table) == sorted(
        [
            *WEIGHT_FILES,
            "privacy/index.json",
            "privacy/index.safetensors",
            "lesion/config.json",
            "lesion/lesion.safetensors",
            "lesion/masks.safetensors",
            "lesion/privacy/index.json",
            "lesion/privacy/index.safetensors",
            "lesion/privacy/lesion_crop.json",
        ]
    )
    assert all(table[rel] == FileRecord.of(full_model_dir / rel) for rel in table)
    assert verify_files(full_model_dir) == len(table)
    # The records are the directory's, not the model's.
    assert not hasattr(load_config(full_model_dir), FILES_KEY)
    assert verify_model_dir(full_model_dir) == full_model_dir


@pytest.mark.parametrize("rel", list(LOADERS))
def test_a_truncated_file_is_named_by_its_loader_and_by_verify(model_copy, rel):
    size = (model_copy / rel).stat().st_size
    _truncate(model_copy / rel)
    expected = f"{model_copy / rel}: 100 bytes, but config.json records {size:,}; the file is truncated or replaced"
    for call in (LOADERS[rel], verify_model_dir):
        with pytest.raises(InputError) as err:
            call(model_copy)
        assert str(err.value).startswith(expected) and "\n" not in str(err.value)


@pytest.mark.parametrize("rel", ["unet.safetensors", "privacy/index.safetensors", "lesion/lesion.safetensors"])
def test_a_flipped_byte_of_the_same_size_is_a_sha256_mismatch(model_copy, rel):
    _flip(model_copy / rel)
    for call in (LOADERS[rel], verify_model_dir):
        with pytest.raises(InputError, match=r"sha256 [0-9a-f]{16}\.\.\., but config\.json records") as err:
            call(model_copy)
        assert str(err.value).startswith(f"{model_copy / rel}: ") and "damaged or replaced" in str(err.value)


def test_a_recorded_file_that_is_missing_is_named(model_copy):
    (model_copy / "privacy" / "index.json").unlink()
    with pytest.raises(InputError, match=r"privacy/index\.json: missing, but config\.json records it"):
        verify_model_dir(model_copy)


def test_sizes_are_checked_before_any_digest(model_copy):
    # A damaged unet (same size) and a truncated index: the cheap size check names the index first.
    _flip(model_copy / "unet.safetensors")
    _truncate(model_copy / "privacy" / "index.safetensors")
    with pytest.raises(InputError, match=r"index\.safetensors: 100 bytes"):
        verify_model_dir(model_copy)


def test_a_directory_without_records_still_loads(model_copy):
    _strip_records(model_copy)
    assert records(model_copy) == {} and verify_files(model_copy) == 0
    assert verify_model_dir(model_copy) == model_copy
    load_model(model_copy)
    load_index_for_model(model_copy)
    assert load_lesion_model(model_copy) is not None and load_mask_bank(model_copy) is not None


def test_a_bare_folder_without_config_is_not_verifiable(tmp_path, full_model_dir):
    import shutil

    shutil.copytree(full_model_dir / "privacy", tmp_path / "privacy")
    assert verify_files(tmp_path) == 0
    load_index_for_model(tmp_path)
    assert record_folder(tmp_path, "privacy") == {}  # nothing to record into
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("name", builtin_models())
def test_the_shipped_models_carry_records_and_verify_clean(name):
    path = verify_model_dir(f"builtin:{name}")
    table = records(path)
    assert {*WEIGHT_FILES, "privacy/index.safetensors", "lesion/lesion.safetensors"} <= set(table)
    assert verify_files(path) == len(table) == 11


def test_damaged_safetensors_in_a_privacy_index_without_records_is_an_input_error(model_copy):
    _strip_records(model_copy)
    (model_copy / "privacy" / "index.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(InputError, match="unreadable privacy index") as err:
        PrivacyIndex.load(model_copy / "privacy")
    assert "\n" not in str(err.value)
    _truncate(model_copy / "privacy" / "index.safetensors", 5)
    with pytest.raises(InputError, match="unreadable privacy index"):
        load_index_for_model(model_copy)


def test_resaving_rewrites_the_weight_records_and_drops_the_kept_index_records(tiny_model, tmp_path):
    out = save_model(tiny_model, tmp_path / "m")
    assert sorted(records(out)) == sorted(WEIGHT_FILES)
    before = records(out)["unet.safetensors"]
    (out / "privacy").mkdir()
    (out / "privacy" / "index.json").write_text("{}")
    record_folder(out, "privacy")
    with torch.no_grad():
        next(tiny_model.unet.parameters()).add_(1.0)
    save_model(tiny_model, out)
    # The index is kept but no longer recorded: its builder records what it writes, after saving.
    assert (out / "privacy" / "index.json").read_text() == "{}"
    assert sorted(records(out)) == sorted(WEIGHT_FILES)
    assert records(out)["unet.safetensors"] != before
    verify_model_dir(out)


def test_record_folder_replaces_the_records_of_the_folder(model_copy):
    (model_copy / "lesion" / "privacy" / "lesion_crop.json").unlink()
    record_folder(model_copy, "lesion/privacy")
    assert "lesion/privacy/lesion_crop.json" not in records(model_copy)
    assert "lesion/lesion.safetensors" in records(model_copy)  # outside the folder: kept
    verify_model_dir(model_copy)


def test_the_digest_tracks_every_verified_file(model_copy):
    digest = model_sha256(model_copy)
    _flip(model_copy / "privacy" / "index.json", at=-2)
    assert model_sha256(model_copy) == digest  # the index file itself is not hashed ...
    record_files(model_copy, ["privacy/index.json"])
    assert model_sha256(model_copy) != digest  # ... but its record in config.json is


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"../outside.bin": {"size": 1, "sha256": "0" * 64}}, "expected a relative path"),
        ({"/etc/passwd": {"size": 1, "sha256": "0" * 64}}, "expected a relative path"),
        ({"config.json": {"size": 1, "sha256": "0" * 64}}, "expected a relative path"),
        ({"unet.safetensors": {"size": -1, "sha256": "0" * 64}}, 'expected {"size": bytes'),
        ({"unet.safetensors": {"size": 1, "sha256": "xyz"}}, 'expected {"size": bytes'),
        ({"unet.safetensors": 5}, 'expected {"size": bytes'),
        ([], "expected a map"),
    ],
)
def test_malformed_records_name_config_json(model_copy, entry, match):
    raw = json.loads((model_copy / "config.json").read_text())
    raw[FILES_KEY] = entry
    (model_copy / "config.json").write_text(json.dumps(raw))
    for call in (verify_model_dir, load_config, load_model):
        with pytest.raises(InputError, match=match) as err:
            call(model_copy)
        assert str(err.value).startswith(str(model_copy / "config.json")) and "\n" not in str(err.value)
