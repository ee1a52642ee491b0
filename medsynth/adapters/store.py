"""Writing adapter directories (``medsynth finetune``) and merging them (``medsynth merge``).

The layout is described in ``medsynth.adapters.compose``; loading is ``models.artifact.load_model``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from medsynth.adapters.compose import (
    ADAPTER_FILE,
    ADAPTER_WEIGHT_FILES,
    AUTOENCODER_FILE,
    EMBEDDINGS_FILE,
    FINETUNE_INDEX_DIR,
    lora_state,
    merge_lora,
)
from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.models.artifact import _readable, load_config, load_model, resolve_base, resolve_model_path, save_model
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.models.verify import record_files, record_folder


def base_reference(base: str, out_dir: Path) -> dict[str, str]:
    """How an adapter names its base: ``builtin:<name>``, or a folder (absolute, and relative to the adapter)."""
    if base.startswith("builtin:"):
        return {"id": base}
    return {"id": str(Path(base).resolve()), "relative": os.path.relpath(Path(base).resolve(), out_dir.resolve())}


def save_adapted(model: LatentDiffusionModel, out_dir: Path, *, card: str) -> Path:
    """Write the fine-tuned ``model`` (``config.adapter`` set) as an adapter directory, atomically."""
    adapter = model.config.adapter
    assert adapter is not None
    dtype = torch.float16 if model.config.weights_dtype == "float16" else torch.float32
    meta = {"format": "pt", "medsynth": model.config.medsynth_version}

    def cast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state.items()
        }

    n_p, n_m = len(adapter["new_pathologies"]), len(adapter["new_modalities"])
    emb = {}
    if n_p:
        emb["pathology"] = model.conditioner.pathology_embedding.weight[-n_p:]
    if n_m:
        emb["modality"] = model.conditioner.modality_embedding.weight[-n_m:]
    files = {EMBEDDINGS_FILE: emb}
    if adapter["method"] == "lora":
        files[ADAPTER_FILE] = lora_state(model.unet)
    elif adapter["method"] == "full":
        files[ADAPTER_FILE] = dict(model.unet.state_dict())
    if adapter.get("train_autoencoder"):
        files[AUTOENCODER_FILE] = dict(model.autoencoder.state_dict())
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
        for name, state in files.items():
            save_file(cast(state), str(tmp / name), metadata=meta)
        (tmp / "model_card.md").write_text(card)
        record_files(tmp, list(files))
        _readable(tmp)
    return out_dir


def adapter_bytes(model_dir: str | Path) -> int:
    """Bytes of the weights an adapter directory stores (the privacy index and card not counted)."""
    return sum((Path(model_dir) / f).stat().st_size for f in ADAPTER_WEIGHT_FILES if (Path(model_dir) / f).is_file())


def merge(adapted: str | Path, out_dir: str | Path, *, scale: float | None = None) -> Path:
    """``medsynth merge``: a standalone model directory from a fine-tuned one (LoRA folded in).

    The base's privacy index is copied to ``privacy/`` and the fine-tuning scans' to
    ``finetune/privacy/``; the generation gate checks both.

    Raises:
        InputError: not a fine-tuned directory, a gated LoRA (``adapters.gate``), a missing base
            or one with another digest.
    """
    src = resolve_model_path(adapted)
    config = load_config(src)
    if config.adapter is None:
        raise InputError(f"{src}: not a fine-tuned model directory (config.json has no adapter); nothing to merge")
    if (config.adapter.get("lora") or {}).get("gate"):
        raise InputError(
            f"{src}: its LoRA is gated to the new tokens (lora.gate: true), which merged weights cannot keep "
            "(every class would get the update); use the fine-tuned directory itself"
        )
    base_dir = resolve_base(src, config.adapter)
    model = load_model(src, scale=scale)
    merge_lora(model.unet)
    info = config.adapter
    model.config.adapter = None
    out = Path(out_dir)
    card = (src / "model_card.md").read_text() if (src / "model_card.md").is_file() else f"# {config.name}\n"
    used = info.get("scale", 1.0) if scale is None else scale
    card += (
        f"\n## Merged\n\nStandalone copy of `{src.name}` (method {info['method']}, scale {used}) with its base "
        f"`{info['base']['id']}` (sha256 `{info['base']['sha256']}`) folded in by `medsynth merge`.\n"
    )
    save_model(model.eval(), out, card=card)
    for src_index, dst in ((base_dir / "privacy", "privacy"), (src / "privacy", FINETUNE_INDEX_DIR)):
        if src_index.is_dir():
            if (out / dst).exists():
                shutil.rmtree(out / dst)
            shutil.copytree(src_index, out / dst)
            record_folder(out, dst)
    return out
