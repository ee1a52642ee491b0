"""Model directories: save, load, hash; the built-in models.

A model directory holds::

    config.json                 ModelConfig (architecture, vocabularies, preprocessing, scale, scheduler,
                                training-data fingerprint)
    autoencoder.safetensors     AutoencoderKL weights
    unet.safetensors            DiffusionModelUNet weights (the EMA weights after training)
    conditioner.safetensors     pathology/modality embeddings
    model_card.md               how it was trained, on what, and how well it does
    privacy/                    the privacy index (written by medsynth.privacy; kept on re-save)
    lesion/                     the lesion model, when there is one (medsynth.lesions.model)

config.json also records the size and SHA-256 of every weight and index file (``files``, see
``medsynth.models.verify``); ``load_model`` and ``verify_model_dir`` check them, so a truncated
or damaged copy is a one-line ``InputError`` naming the file.

Weights are safetensors only; pickle-based checkpoints are refused. ``config.weights_dtype``
may be ``float16`` to halve the files; ``load_model`` casts every tensor back to float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medsynth.digest import update_from_file
from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.models.verify import read_config_json, record_files, split_records, verify_files

BUILTIN_PREFIX = "builtin:"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
CONFIG_NAME = "config.json"
CARD_NAME = "model_card.md"
PRIVACY_DIR = "privacy"
# file name -> attribute of LatentDiffusionModel
WEIGHT_FILES = {
    "autoencoder.safetensors": "autoencoder",
    "unet.safetensors": "unet",
    "conditioner.safetensors": "conditioner",
}
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}


def builtin_models() -> list[str]:
    """Names usable as ``builtin:<name>`` (shipped directories that contain a config.json)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_NAME).is_file())


def default_card(model: LatentDiffusionModel) -> str:
    """A minimal model card when the caller gives none (training writes a full one)."""
    cfg = model.config
    return (
        f"# {cfg.name}\n\n"
        f"- spatial dims: {cfg.spatial_dims}, grid {list(model.preprocessing.size)} at "
        f"{list(model.preprocessing.spacing)} mm\n"
        f"- pathologies: {', '.join(cfg.pathologies)}\n- modalities: {', '.join(cfg.modalities)}\n"
        f"- scheduler: {json.dumps(cfg.scheduler)}\n- training data: {json.dumps(cfg.fingerprint)}\n"
        f"- created {cfg.created} with medsynth {cfg.medsynth_version}\n"
    )


def save_model(model: LatentDiffusionModel, out_dir: str | Path, *, card: str | None = None) -> Path:
    """Write ``model`` as a model directory at ``out_dir`` (atomically; an existing ``privacy/`` is kept).

    config.json records the size and SHA-256 of the three weight files. A kept ``privacy/`` is
    not recorded here: its writer (the privacy index builder) records the files it writes, and
    training rebuilds the index right after saving, which would make records carried over stale.

    Returns:
        The directory written.
    """
    out = Path(out_dir)
    dtype = torch.float16 if model.config.weights_dtype == "float16" else torch.float32
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
        for fname, attr in WEIGHT_FILES.items():
            state = {
                k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
                for k, v in getattr(model, attr).state_dict().items()
            }
            save_file(state, str(tmp / fname), metadata={"format": "pt", "medsynth": model.config.medsynth_version})
        (tmp / CARD_NAME).write_text(card if card is not None else default_card(model))
        record_files(tmp, WEIGHT_FILES)
        if (out / PRIVACY_DIR).is_dir():
            shutil.copytree(out / PRIVACY_DIR, tmp / PRIVACY_DIR)
        _readable(tmp)
    return out


def _readable(folder: Path) -> None:
    """Give the files the umask's usual permissions (safetensors writes them owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    os.chmod(folder, 0o777 & ~umask)


def resolve_model_path(path_or_name: str | Path) -> Path:
    """``builtin:<name>`` or a directory -> the model directory; clear ``InputError`` otherwise."""
    text = str(path_or_name)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        available = builtin_models()
        if name not in available:
            raise InputError(
                f"unknown built-in model {text!r}; available: "
                + (", ".join(BUILTIN_PREFIX + n for n in available) or "none (the package ships no trained models)")
            )
        return PRETRAINED_DIR / name
    path = Path(path_or_name)
    if path.suffix.lower() in _PICKLE_SUFFIXES or (path.is_file() and path.suffix != ".json"):
        raise InputError(
            f"{path}: medsynth loads only safetensors model directories (config.json + *.safetensors); "
            "pickle-based checkpoints (.pt/.pth/.ckpt/.bin) are refused because loading them can run code"
        )
    if not path.is_dir():
        raise InputError(f"{path}: no such model directory; expected a folder with {CONFIG_NAME} and *.safetensors")
    if not (path / CONFIG_NAME).is_file():
        raise InputError(f"{path}: not a model directory: {CONFIG_NAME} is missing")
    return path


def load_config(path_or_name: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of a model directory or built-in model, without loading any weights.

    The one reader of a model's config.json: ``load_model``, protocol validation and the
    privacy index all come through here, so a damaged file gives the same message everywhere.

    Raises:
        InputError: no such model, not a model directory, unreadable or invalid config.json.
    """
    path = resolve_model_path(path_or_name)
    # The file records are the directory's, not the model's: ModelConfig never holds them.
    raw, _ = split_records(read_config_json(path), path / CONFIG_NAME)
    return ModelConfig.from_dict(raw)


def verify_model_dir(path_or_name: str | Path) -> Path:
    """Check every file config.json records (size, then SHA-256) in a model directory or built-in.

    Cheap enough to call on every validation (the shipped models are a few MB to about 20 MB).
    A directory without records (written before they existed) passes: it is not verifiable.

    Returns:
        The model directory.

    Raises:
        InputError: no such model, unreadable config.json or records, or a recorded file that is
            missing, truncated or damaged (one line naming the file).
    """
    path = resolve_model_path(path_or_name)
    verify_files(path)
    return path


def load_model(
    path_or_name: str | Path, device: str | torch.device = "cpu", *, scale: float | None = None
) -> LatentDiffusionModel:
    """Load a model directory or a built-in model (``"builtin:phantom-2d"``), in eval mode, float32.

    The weight files are checked against config.json's records first; the privacy index and the
    lesion model are checked by their own loaders (``verify_model_dir`` checks everything).
    A fine-tuned directory (``medsynth finetune``) is composed from its base and its adapter
    (``medsynth.adapters.compose``); ``scale`` overrides its adapter scale (0: the base's UNet).

    Raises:
        InputError: missing directory/config/weights, a pickle checkpoint, an unknown built-in,
            weights that are truncated, damaged or do not fit the config, an adapter whose base
            has another digest, a ``scale`` given for a model without adapter.
    """
    path = resolve_model_path(path_or_name)
    config = load_config(path)
    if config.adapter is not None:
        return _load_adapted(path, config, scale).to(device).eval()
    if scale is not None:
        raise InputError(f"{path}: scale={scale} given, but this model has no adapter (it is not fine-tuned)")
    # Before reading: a truncated file gets "N bytes, but config.json records M", not a parser error.
    verify_files(path, tuple(WEIGHT_FILES))
    model = LatentDiffusionModel(config)
    for fname, attr in WEIGHT_FILES.items():
        wpath = path / fname
        if not wpath.is_file():
            raise InputError(f"{wpath}: missing; a model directory needs {sorted(WEIGHT_FILES)}")
        try:
            state = load_file(str(wpath))
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{wpath}: not a readable safetensors file ({exc})") from None
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            getattr(model, attr).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "mismatch"
            raise InputError(f"{wpath}: weights do not match {CONFIG_NAME} ({first})") from None
    return model.to(device).eval()


def _load_adapted(path: Path, config: ModelConfig, scale: float | None) -> LatentDiffusionModel:
    """A fine-tuned directory composed with its base (``medsynth.adapters.compose``)."""
    from medsynth.adapters.compose import apply_adapter, compose

    adapter = config.adapter or {}
    scale = float(adapter.get("scale", 1.0) if scale is None else scale)
    if scale < 0:
        raise InputError(f"{path}: adapter scale {scale}: expected a number >= 0")
    base_dir = resolve_base(path, adapter)
    if load_config(base_dir).adapter is not None:
        raise InputError(f"{base_dir}: the base is itself an adapter; `medsynth merge` it first")
    return apply_adapter(compose(load_model(base_dir), config), path, scale)


def resolve_base(adapter_dir: Path, adapter: dict[str, Any]) -> Path:
    """The base model directory of an adapter, checked against its recorded ``model_sha256``.

    Raises:
        InputError: the base is missing, or its digest is not the recorded one (both named).
    """
    base = adapter["base"]
    candidates = [base["id"]]
    if "relative" in base:
        candidates.append(str((adapter_dir / base["relative"]).resolve()))
    path = next((c for c in candidates if c.startswith("builtin:") or Path(c).is_dir()), None)
    if path is None:
        raise InputError(
            f"{adapter_dir}: the base model {base['id']} is missing; the adapter needs its base "
            "(copy it back, or `medsynth merge` where it is present to get a standalone model)"
        )
    root = resolve_model_path(path)
    digest = model_sha256(root)
    if digest != base["sha256"]:
        raise InputError(
            f"{adapter_dir}: base {base['id']} has sha256 {digest}, but the adapter was trained on sha256 "
            f"{base['sha256']}; use the base it was made from"
        )
    return root


# The lesion model's files, when the directory has one (``lesions.model.save_lesion_model``).
LESION_FILES = ("lesion/config.json", "lesion/lesion.safetensors", "lesion/masks.safetensors")


def model_sha256(path: str | Path) -> str:
    """SHA-256 over config.json and the weight files (in a fixed order), for manifests.

    A lesion model's config, weights and mask bank count too when present, so the digest of a
    manifest names the lesion model that made its lesions. config.json holds the size and
    SHA-256 of every recorded file (weights, privacy indexes, lesion model), so the digest changes
    whenever any verified file changes, a rebuilt privacy index included; config.json records
    no digest of itself, so nothing is circular. Files hashed directly as well keep the digest
    meaningful for directories written before records existed.
    """
    root = resolve_model_path(path)
    h = hashlib.sha256()
    lesion = [f for f in LESION_FILES if (root / f).is_file()]
    weights = sorted(WEIGHT_FILES)
    if read_config_json(root).get("adapter") is not None:
        # An adapter's own files; its config.json names the base's digest, so the base counts too.
        from medsynth.adapters.compose import ADAPTER_WEIGHT_FILES

        weights = sorted(f for f in ADAPTER_WEIGHT_FILES if (root / f).is_file())
    for fname in [CONFIG_NAME, *weights, *lesion]:
        h.update(fname.encode())
        update_from_file(h, root / fname)
    return h.hexdigest()
