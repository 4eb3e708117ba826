"""Loading and saving OpenVision 3 models: ``load_pretrained`` / ``save_pretrained`` (also
``openvision3.load_pretrained`` / ``openvision3.save_pretrained``; the model class holds its
architecture only). ``openvision3.load`` builds its pipeline on them.

Two layouts are read:
  - ours: ``config.json`` (``{"format": "openvision3", "model": ModelConfig}``, and
    ``"resolution"``: the input side in pixels the weights were last trained at, when known) +
    ``model.safetensors`` (+ ``vae/`` for VAEs built from a config, + ``model_card.json``);
  - the authors' released encoder: ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``
    (an open_clip ``VisionTransformer`` with a 16-channel patch conv; keys with or without
    ``visual.``). Every field of the JSON is read; unsupported ones are refused by name.
A path is a local directory or a Hugging Face repo id (fetched with huggingface_hub, which
honours ``HF_HUB_OFFLINE`` and its cache).
"""

from __future__ import annotations

import json
import math
import os
import time

import torch

from openvision3.artefacts import (
    KIND_KEY,
    TOKENIZER,
    portable_name,
    require_kind,
    tokenizer_card,
    users_file,
    write_card,
)
from openvision3.dataclass_io import from_dict, to_dict
from openvision3.errors import MissingWeightsError
from openvision3.files import staged_folder, write_json
from openvision3.models.encoder import EncoderConfig
from openvision3.models.openvision3 import ModelConfig, OpenVision3
from openvision3.models.vae import FrozenVAE, VAEConfig
from openvision3.wrappers import unwrap_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model_card.json"
RELEASED_CONFIG = "open_clip_config.json"
RELEASED_WEIGHTS = "open_clip_pytorch_model.bin"
FORMAT = "openvision3"
VERSION = 2  # 2: caption.image_pos (see _upgrade)


def resolve(path: str) -> str:
    """Local directory, or a hub repo id downloaded (or found in the cache) -> local directory."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path!r} is a file; pass the directory that holds the model files")
    from huggingface_hub import snapshot_download

    patterns = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "vae/*", RELEASED_CONFIG, RELEASED_WEIGHTS]
    try:
        return snapshot_download(path, allow_patterns=patterns)
    except Exception as err:  # offline, unknown repo, gated: all end here
        raise MissingWeightsError(
            f"{path!r} is neither a local directory nor a reachable Hugging Face repo "
            f"({err.__class__.__name__}). Download it on a connected machine with "
            f"`huggingface-cli download {path} --local-dir <DIR>` and pass <DIR>."
        ) from None


# ---------------------------------------------------------------------- our layout
def save_pretrained(
    model: OpenVision3,
    path: str,
    card: dict | None = None,
    include_vae: bool | None = None,
    resolution: int | None = None,
) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``model_card.json`` into ``path``.

    The VAE is written to ``vae/`` when it was built from a config (no hub id / folder to
    reference) or read from an absolute local path (recorded by its folder name), or when
    ``include_vae`` is True. ``README.md``, the Hub's model card, is written unless the folder
    holds a README.md of the user's. ``resolution``: the input side in pixels the
    weights were last trained at, recorded in both JSON files; ``load`` runs there by default.
    """
    from safetensors.torch import save_model

    cfg = model.cfg
    if resolution is not None and (resolution < 1 or resolution % cfg.pixel_patch):
        raise ValueError(
            f"resolution {resolution} must be a positive multiple of {cfg.pixel_patch} "
            "(pixels per token)"
        )
    has_vae = model.vae is not None
    # A VAE from this machine's own folder travels in vae/ (its absolute path would not).
    local_vae = os.path.isabs(cfg.vae.pretrained)
    include_vae = (not cfg.vae.pretrained or local_vae) if include_vae is None else include_vae
    config = {
        "format": FORMAT,
        KIND_KEY: TOKENIZER,
        "version": VERSION,
        "model": to_dict(cfg),
        "has_vae": has_vae,
    }
    if local_vae and has_vae and include_vae:
        config["model"]["vae"]["pretrained"] = portable_name(cfg.vae.pretrained)
    if resolution is not None:
        config["resolution"] = resolution
    card = _card(model, card, resolution)
    parts = [p for p in ("decoder", "text", "captioner") if getattr(model, p) is not None]
    parts = [{"text": "text tower", "captioner": "caption decoder"}.get(p, p) for p in parts]
    readme = tokenizer_card(portable_name(path), card, cfg.encoder.width, cfg.pixel_patch, parts)
    # Written whole beside ``path`` and moved in: an interrupted export leaves no half folder
    # and replaces no file; config.json (what names the folder an export) lands last.
    with staged_folder(path, last=CONFIG_NAME, keep=users_file) as tmp:
        if has_vae and include_vae:
            model.vae.save_pretrained(os.path.join(tmp, "vae"))
            config["vae_subfolder"] = "vae"
        save_model(unwrap_model(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json(os.path.join(tmp, CONFIG_NAME), config)
        write_json(os.path.join(tmp, CARD_NAME), card)
        if not users_file(os.path.join(path, "README.md")):
            write_card(tmp, readme)


def _card(model: OpenVision3, extra: dict | None, resolution: int | None) -> dict:
    cfg = model.cfg
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    card = {
        "model": cfg.name or "custom",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vae": {
            "source": portable_name(cfg.vae.pretrained) or "built from config (saved in vae/)",
            "convention": cfg.vae.convention,
            "scaling_factor": cfg.vae.scaling_factor,
            "shift_factor": cfg.vae.shift_factor if cfg.vae.convention == "flux" else 0.0,
        },
        "parameters": {
            part: count(getattr(model, part))
            for part in ("encoder", "decoder", "text", "captioner")
        },
        "tokens": f"(B, (H/{cfg.pixel_patch})(W/{cfg.pixel_patch}), {cfg.encoder.width})",
    }
    if resolution is not None:
        card["resolution"] = resolution
    card.update(extra or {})
    return card


def load_pretrained(
    path: str,
    vae: FrozenVAE | str | None = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> OpenVision3:
    """Load our export or a released encoder from a directory or hub id.

    ``vae``: "auto" (the saved ``vae/`` folder, else the config's source), a hub id / folder,
    a ``FrozenVAE``, or None for a latent-only model (``encode_latents``, ``embed_latents``).
    """
    local = resolve(path)
    # A folder of another kind (a generator, a VLM, a checkpoint, ...) is named in one line
    # before anything is built.
    if require_kind(local, TOKENIZER).name == "released":
        model = load_released(local, vae=vae)
    else:
        model = _load_ours(local, vae)
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def trained_resolution(path: str) -> int | None:
    """The input side in pixels an export was last trained at (``config.json`` "resolution"),
    or None for exports written before it was recorded and for released encoders."""
    config = os.path.join(resolve(path), CONFIG_NAME)
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        return json.load(f).get("resolution")


def _build_vae(vae, cfg: VAEConfig, local_vae_dir: str | None) -> FrozenVAE | None:
    if vae is None or isinstance(vae, FrozenVAE):
        return vae
    if vae != "auto":
        return FrozenVAE(VAEConfig(**{**to_dict(cfg), "pretrained": vae}))
    if local_vae_dir and os.path.isdir(local_vae_dir):
        return FrozenVAE(
            VAEConfig(**{**to_dict(cfg), "pretrained": local_vae_dir, "subfolder": ""})
        )
    if not cfg.pretrained:
        raise MissingWeightsError(
            "this export's VAE was built from a config but its vae/ folder is missing; "
            "pass vae=<path or hub id> or vae=None for a latent-only model"
        )
    return FrozenVAE(cfg)


def _upgrade(config: dict) -> dict:
    """The model dict of an export, with fields added since its version set to what its
    weights were trained with (a newer default would silently change the model)."""
    model = dict(config["model"])
    if config.get("version", 1) < 2 and model.get("caption"):
        # version 2 added caption.image_pos (default "sincos"); earlier decoders had none
        model["caption"] = {"image_pos": "none", **model["caption"]}
    return model


def _load_ours(local: str, vae) -> OpenVision3:
    from safetensors.torch import load_model

    with open(os.path.join(local, CONFIG_NAME)) as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{local}/{CONFIG_NAME} is not an OpenVision3 config (format={config.get('format')!r})"
        )
    cfg = from_dict(ModelConfig, _upgrade(config), "model")
    vae_dir = os.path.join(local, config["vae_subfolder"]) if config.get("vae_subfolder") else None
    model = OpenVision3(cfg, vae=_build_vae(vae, cfg.vae, vae_dir))
    weights = os.path.join(local, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise MissingWeightsError(f"{local!r} is an OpenVision 3 export without {WEIGHTS_NAME}")
    load_model(model, weights, strict=True)
    return model


# ---------------------------------------------------------------------- released layout
# open_clip vision_cfg fields: the value we support (None = any value; read elsewhere).
_RELEASED_SUPPORTED = {
    "image_size": None,
    "patch_size": None,
    "width": None,
    "layers": None,
    "head_width": None,
    "mlp_ratio": None,
    "in_channels": None,
    "output_tokens": None,
    "patch_dropout": None,
    "norm_kwargs": None,
    "output_dim": None,
    "attn_pooler_queries": None,
    "attn_pooler_heads": None,
    "no_ln_pre": True,
    "pool_type": "avg",
    "final_ln_after_pool": True,
    "attentional_pool": False,
    "pos_embed_type": "learnable",
}
# Fields that change the architecture whenever they are set (truthy): refused.
_RELEASED_MUST_BE_UNSET = (
    "ls_init_value",
    "act_kwargs",
    "block_type",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
    "timm_model_name",
)


def _released_vision_cfg(raw: dict) -> tuple[dict, int | None]:
    model_cfg = raw.get("model_cfg", raw)
    vision = model_cfg.get("vision_cfg")
    if not isinstance(vision, dict):
        raise ValueError(f"{RELEASED_CONFIG} has no vision_cfg section")
    timm = bool(vision.get("timm_model_name"))
    for key, value in vision.items():
        if key in _RELEASED_MUST_BE_UNSET:
            if value:
                raise ValueError(f"{RELEASED_CONFIG}: vision_cfg.{key}={value!r} is not supported")
        elif key.startswith("timm_") and not timm:
            continue  # timm options are inert without a timm model
        elif key not in _RELEASED_SUPPORTED:
            raise ValueError(f"{RELEASED_CONFIG}: unsupported vision_cfg field {key!r}={value!r}")
        elif _RELEASED_SUPPORTED[key] is not None and value != _RELEASED_SUPPORTED[key]:
            raise ValueError(
                f"{RELEASED_CONFIG}: vision_cfg.{key}={value!r} is not supported "
                f"(expected {_RELEASED_SUPPORTED[key]!r})"
            )
    if "norm_kwargs" in vision and set(vision["norm_kwargs"] or {}) - {"eps"}:
        raise ValueError(
            f"{RELEASED_CONFIG}: vision_cfg.norm_kwargs={vision['norm_kwargs']!r} is not supported"
        )
    return vision, model_cfg.get("embed_dim")


def convert_released_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` keys -> ``Encoder`` keys (``visual.`` prefix optional)."""
    sd = {k.removeprefix("visual."): v for k, v in sd.items()}
    if any(k.startswith("ln_pre.") for k in sd):
        raise ValueError("released checkpoint has ln_pre weights; OpenVision 3 encoders have none")
    names = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "attn.in_proj_weight": "attn.qkv.weight",
        "attn.in_proj_bias": "attn.qkv.bias",
        "attn.out_proj": "attn.proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out = {}
    for key, value in sd.items():
        if key == "class_embedding":
            out["cls_token"] = value
        elif key == "positional_embedding":
            out["pos_embed"] = value
        elif key.startswith("conv1."):
            out["patch_embed." + key[len("conv1.") :]] = value
        elif key.startswith("ln_post."):
            out["norm." + key[len("ln_post.") :]] = value
        elif key == "proj":
            out["head.weight"] = value.t().contiguous()  # x @ proj == Linear(weight=proj^T)
        elif key.startswith("transformer.resblocks."):
            rest = key[len("transformer.resblocks.") :]
            idx, name = rest.split(".", 1)
            for old, new in names.items():
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            out[f"blocks.{idx}.{name}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in the released checkpoint")
    return out


def read_released(local: str) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
    """Released encoder directory -> (our ``EncoderConfig``, its ``Encoder`` state dict)."""
    with open(os.path.join(local, RELEASED_CONFIG)) as f:
        vision, embed_dim = _released_vision_cfg(json.load(f))
    weights = os.path.join(local, RELEASED_WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"missing {weights}")
    sd = convert_released_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    conv = sd["patch_embed.weight"]  # (D, C, p, p)
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = math.isqrt(sd["pos_embed"].shape[0] - 1)
    checks = {
        "width": width,
        "layers": depth,
        "patch_size": patch,
        "in_channels": channels,
        "image_size": grid * patch,
    }
    for key, actual in checks.items():
        if key in vision and int(vision[key]) != actual:
            raise ValueError(f"{RELEASED_CONFIG}: {key}={vision[key]} but the weights say {actual}")
    head_width = int(vision.get("head_width", 64))
    norm_kwargs = vision.get("norm_kwargs") or {}
    embed = sd["head.weight"].shape[0]
    if embed_dim is not None and int(embed_dim) != embed:
        raise ValueError(f"{RELEASED_CONFIG}: embed_dim={embed_dim} but proj has {embed} columns")
    enc = EncoderConfig(
        in_channels=channels,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=width // head_width,
        mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        embed_dim=embed,
        ln_eps=float(norm_kwargs.get("eps", 1e-6)),
        pos_embed="learned",
        pos_grid=(grid, grid),
        patch_bias="patch_embed.bias" in sd,
    )
    return enc, sd


def is_released(local: str) -> bool:
    """Whether ``local`` (a directory) holds a released encoder (``open_clip_config.json``)."""
    return os.path.isfile(os.path.join(local, RELEASED_CONFIG))


def load_released(local: str, vae: FrozenVAE | str | None = "auto") -> OpenVision3:
    """Released encoder directory -> encoder-only ``OpenVision3`` (no decoder / text towers)."""
    enc, sd = read_released(local)
    vae_cfg = VAEConfig()
    cfg = ModelConfig(
        encoder=enc,
        decoder=None,
        text=None,
        caption=None,
        vae=vae_cfg,
        name=os.path.basename(os.path.normpath(local)),
    )
    model = OpenVision3(cfg, vae=_build_vae(vae, vae_cfg, None))
    model.encoder.load_state_dict(sd, strict=True)
    return model
