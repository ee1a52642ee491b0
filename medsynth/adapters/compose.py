"""Adapter model directories: what a fine-tuning stores, how ``load_model`` composes it, ``merge``.

A fine-tuned directory holds only what changed::

    config.json              the composed ModelConfig (vocabularies with the new labels) and its
                             ``adapter`` section: base id + sha256, method, LoRA settings, scale
    embeddings.safetensors   the new token rows ("pathology", "modality"; (n_new, cond_dim) each)
    adapter.safetensors      lora: the peft LoRA weights; full: the whole UNet; embedding: absent
    autoencoder.safetensors  only with train_autoencoder
    model_card.md, privacy/  the card; the privacy index of the fine-tuning scans

``models.artifact.load_model`` loads the base (refusing one whose ``model_sha256`` differs from
the recorded one); ``compose`` and ``apply_adapter`` then append the new rows to its embeddings and applies the UNet change at the adapter's
``scale``: LoRA by peft layers whose update is scaled (``alpha / rank * scale``), full weights by
``base + scale * (tuned - base)``. At scale 0 the UNet is the base's own, untouched, so samples
equal the base's bit for bit. ``adapters.store`` writes the directory; its ``merge`` folds LoRA into the weights (peft ``merge``) and writes a
standalone directory; its outputs equal the composed model's to float rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from medsynth.adapters.gate import TokenGate
from medsynth.errors import InputError
from medsynth.models.conditioning import Conditioner
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.models.verify import verify_files

ADAPTER_FILE = "adapter.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"
AUTOENCODER_FILE = "autoencoder.safetensors"
ADAPTER_WEIGHT_FILES = (ADAPTER_FILE, AUTOENCODER_FILE, EMBEDDINGS_FILE)
# In a merged directory: the fine-tuning scans' index, beside the base's own in privacy/.
FINETUNE_INDEX_DIR = "finetune/privacy"
_ADAPTER_NAME = "default"  # peft's adapter name; one adapter per directory


# -- peft LoRA on the UNet -------------------------------------------------------------------


def inject_lora(unet: nn.Module, lora: dict[str, Any]) -> None:
    """Put peft LoRA layers on the modules whose names end in ``lora["target_modules"]`` (in place).

    Their update starts at zero (peft's init: B = 0), so the UNet's output is unchanged until trained;
    only the LoRA weights require grad afterwards.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=int(lora["rank"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora["target_modules"]),
    )
    try:
        inject_adapter_in_model(config, unet, adapter_name=_ADAPTER_NAME)
    except ValueError as exc:  # peft: no module matched the targets
        raise InputError(f"lora.target_modules {lora['target_modules']}: {str(exc).splitlines()[0]}") from None


def lora_layers(unet: nn.Module) -> list[tuple[str, Any]]:
    """The peft LoRA layers of ``unet``, by module name."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer)]


def lora_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``unet`` (peft's names, without the adapter name)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def attach_gate(unet: nn.Module, conditioner: Conditioner, n_old_pathologies: int, n_old_modalities: int) -> TokenGate:
    """Gate every LoRA layer of ``unet`` (after ``inject_lora``) to the new tokens (``adapters.gate``)."""
    gate = TokenGate(conditioner, n_old_pathologies, n_old_modalities)
    unet.register_forward_pre_hook(gate.before_unet, with_kwargs=True)
    for _, layer in lora_layers(unet):
        layer.lora_B[_ADAPTER_NAME].register_forward_hook(gate.after_lora_b)
    return gate


def set_lora_scale(unet: nn.Module, scale: float) -> None:
    """Scale every LoRA update: ``alpha / rank * scale`` (peft ``set_scale``)."""
    for _, layer in lora_layers(unet):
        layer.set_scale(_ADAPTER_NAME, scale)


def merge_lora(unet: nn.Module) -> None:
    """Fold each LoRA update into its base layer's weight and put the plain layer back (in place).

    The update of ``B(A(x))`` is ``scaling * B A``, contracted over the rank: LoRA's B is a 1x1 layer
    (a 1x1 convolution for convolutions), so one einsum serves Linear, Conv2d and Conv3d alike.
    Not peft's ``merge()``: in peft 0.21.2 it fails for 1x1x1 Conv3d layers (it takes them for
    Conv2d 1x1 by ``shape[2:4]``), which every 3D UNet's ``proj_in``/``proj_out`` is.
    """
    for name, layer in lora_layers(unet):
        base = layer.get_base_layer()
        a = layer.lora_A[_ADAPTER_NAME].weight
        b = layer.lora_B[_ADAPTER_NAME].weight
        with torch.no_grad():
            delta = torch.einsum("or,ri...->oi...", b.flatten(1), a) * layer.scaling[_ADAPTER_NAME]
            base.weight += delta.reshape(base.weight.shape).to(base.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, base)


# -- reading ---------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise InputError(f"{where}: weights do not match config.json ({first})") from None


# -- compose ---------------------------------------------------------------------------------


def compose(base: LatentDiffusionModel, config: ModelConfig) -> LatentDiffusionModel:
    """A model of ``config`` (base vocabularies + new labels) holding the base's weights; new rows from the conditioner's init."""
    adapter = config.adapter or {}
    news = {k: v["init_from"] for k, v in adapter.get("new_pathologies", {}).items()}
    newm = {k: v["init_from"] for k, v in adapter.get("new_modalities", {}).items()}
    model = LatentDiffusionModel(config).to(base.device)
    model.autoencoder.load_state_dict(base.autoencoder.state_dict())
    model.unet.load_state_dict(base.unet.state_dict())
    model.conditioner.load_state_dict(base.conditioner.extended(news, newm).state_dict())
    return model


def apply_adapter(model: LatentDiffusionModel, path: Path, scale: float) -> LatentDiffusionModel:
    """Load a fine-tuned directory's files into ``compose(base, config)``: new rows, autoencoder, UNet change at ``scale``.

    ``models.artifact.load_model`` calls it once the base is checked (digest) and loaded.
    """
    config = model.config
    adapter = config.adapter or {}
    present = [f for f in ADAPTER_WEIGHT_FILES if (path / f).is_file()]
    verify_files(path, present)
    emb = _read(path / EMBEDDINGS_FILE) if EMBEDDINGS_FILE in present else {}
    with torch.no_grad():
        for key, table in (
            ("pathology", model.conditioner.pathology_embedding),
            ("modality", model.conditioner.modality_embedding),
        ):
            n_new = len(adapter.get(f"new_{'pathologies' if key == 'pathology' else 'modalities'}", {}))
            rows = emb.get(key, torch.zeros(0, config.cond_dim))
            if rows.shape != (n_new, config.cond_dim):
                raise InputError(
                    f"{path / EMBEDDINGS_FILE}: {key} rows {tuple(rows.shape)}; config.json names {n_new} new labels "
                    f"of width {config.cond_dim}"
                )
            if n_new:
                table.weight[-n_new:] = rows
    if adapter.get("train_autoencoder"):
        _load_into(model.autoencoder, _read(path / AUTOENCODER_FILE), path / AUTOENCODER_FILE)
    method = adapter["method"]
    if method == "lora" and scale != 0:  # scale 0: the base's UNet as it is (bit for bit)
        from peft import set_peft_model_state_dict

        inject_lora(model.unet, adapter["lora"])
        result = set_peft_model_state_dict(model.unet, _read(path / ADAPTER_FILE), adapter_name=_ADAPTER_NAME)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
        if unexpected or missing:
            raise InputError(
                f"{path / ADAPTER_FILE}: LoRA weights do not match config.json "
                f"(unexpected {unexpected[:2]}, missing {missing[:2]})"
            )
        set_lora_scale(model.unet, scale)
        if adapter["lora"].get("gate"):
            n_p = len(adapter.get("new_pathologies", {}))
            n_m = len(adapter.get("new_modalities", {}))
            cond = model.conditioner
            gate = attach_gate(
                model.unet,
                cond,
                cond.pathology_embedding.num_embeddings - n_p,
                cond.modality_embedding.num_embeddings - n_m,
            )
            gate.check(str(path))
    elif method == "full" and scale != 0:
        tuned = _read(path / ADAPTER_FILE)
        if scale != 1:
            own = model.unet.state_dict()
            tuned = {
                k: torch.lerp(own[k], v, scale) if k in own and v.is_floating_point() else v for k, v in tuned.items()
            }
        _load_into(model.unet, tuned, path / ADAPTER_FILE)
    return model
