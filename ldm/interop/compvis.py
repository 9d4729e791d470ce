"""Export a trained model in the layout of the original CompVis code: an original-style config and a state dict.

`prepare_export(config, checkpoint)` turns a run's merged config and checkpoint into

- a plain config (interpolations resolved; targets at the original module paths; the learnt `scale_factor` written
  into `model.params.scale_factor` with `scale_by_std: false`; `use_ema: false` because the EMA weights are already
  swapped in; `lossconfig` of inference pieces set to `torch.nn.Identity`; `ckpt_path`, `ignore_keys` and other
  training-only keys removed; no data / lightning sections), which the original code and diffusers' `original_config`
  route read;
- the state dict in the CompVis key layout: EMA weights in `model.*` (or the raw ones), no `model_ema.*`, and for
  autoencoders no `loss.*` (LPIPS / discriminator);
- a `CompatReport`: options the original code does not have. `reasons` change what the model computes (e.g.
  `norm_num_groups: 8`, which the original's Encoder/Decoder silently ignore while loading still passes), so the
  config is marked (`MARK_KEY`); `notes` name training-only options that were dropped (sampling is unchanged).

The safetensors metadata keys (`META_*`) are documented here and nowhere else.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint import CheckpointError, atomic_save, extract_state_dict
from ldm.files import atomic_write
from ldm.interop.safe_checkpoint import unshare
from ldm.models.from_run import INFERENCE_LOSS
from ldm.modules.ema import RESERVED_BUFFERS, shadow_name
from ldm.run_folder import COMPVIS_CKPT, COMPVIS_CONFIG  # noqa: F401  (the original release layout)
from ldm.util import ConfigError, resolve_target

FORMAT_VERSION = 1
# safetensors metadata (all values are strings, as the format requires)
META_FORMAT = "format"                    # "pt", what other tools expect of a PyTorch safetensors file
META_VERSION = "ldm_export_version"       # FORMAT_VERSION
META_CONFIG = "ldm_config"                # the exported original-style config, as YAML (same text as <name>.yaml)
META_SHA256 = "ldm_source_sha256"         # sha256 of the checkpoint file the weights came from ("": a folder)
META_STEP = "ldm_global_step"             # the checkpoint's global_step ("" when it has none)
META_EMA = "ldm_ema"                      # "true" when the EMA weights were swapped into model.*
META_COMPATIBLE = "ldm_original_compatible"  # "false" when the config is marked (see CompatReport)
MARK_KEY = "ldm_export"                   # top-level config key of a marked config: {original_compatible, reasons}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
EMA_PREFIX = "model_ema."
ORIGINAL_GROUPS = 32  # GroupNorm groups of every original module

_DDPM = frozenset({
    "unet_config", "timesteps", "beta_schedule", "loss_type", "ckpt_path", "ignore_keys", "load_only_unet", "monitor",
    "use_ema", "first_stage_key", "image_size", "channels", "log_every_t", "clip_denoised", "linear_start",
    "linear_end", "cosine_s", "given_betas", "original_elbo_weight", "v_posterior", "l_simple_weight",
    "conditioning_key", "parameterization", "scheduler_config", "use_positional_encodings", "learn_logvar",
    "logvar_init"})
_LDM = _DDPM | {"first_stage_config", "cond_stage_config", "num_timesteps_cond", "cond_stage_key",
                "cond_stage_trainable", "concat_mode", "cond_stage_forward", "scale_factor", "scale_by_std"}
_AE = frozenset({"ddconfig", "lossconfig", "embed_dim", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels",
                 "monitor"})
_VQ = _AE | {"n_embed", "batch_resize_range", "scheduler_config", "lr_g_factor", "remap", "sane_index_shape",
             "use_ema"}
# The parameters of the original classes (CompVis latent-diffusion, models/diffusion/ddpm.py, models/autoencoder.py,
# modules/diffusionmodules/openaimodel.py, modules/encoders/modules.py; FrozenCLIPEmbedder from stable-diffusion v1)
# and the module path the original imports each from. Our classes are matched by exact name.
ORIGINAL_CLASSES: dict[str, tuple[str, frozenset[str]]] = {
    "DDPM": ("ldm.models.diffusion.ddpm.DDPM", _DDPM),
    "LatentDiffusion": ("ldm.models.diffusion.ddpm.LatentDiffusion", _LDM),
    "UNetModel": ("ldm.modules.diffusionmodules.openaimodel.UNetModel", frozenset({
        "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
        "dropout", "channel_mult", "conv_resample", "dims", "num_classes", "use_checkpoint", "use_fp16",
        "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
        "use_new_attention_order", "use_spatial_transformer", "transformer_depth", "context_dim", "n_embed",
        "legacy"})),
    "AutoencoderKL": ("ldm.models.autoencoder.AutoencoderKL", _AE),
    "VQModel": ("ldm.models.autoencoder.VQModel", _VQ),
    "VQModelInterface": ("ldm.models.autoencoder.VQModelInterface", _VQ),
    "IdentityFirstStage": ("ldm.models.autoencoder.IdentityFirstStage", frozenset({"vq_interface"})),
    "ClassEmbedder": ("ldm.modules.encoders.modules.ClassEmbedder", frozenset({"embed_dim", "n_classes", "key"})),
    "TransformerEmbedder": ("ldm.modules.encoders.modules.TransformerEmbedder",
                            frozenset({"n_embed", "n_layer", "vocab_size", "max_seq_len", "device"})),
    "BERTEmbedder": ("ldm.modules.encoders.modules.BERTEmbedder", frozenset({
        "n_embed", "n_layer", "vocab_size", "max_seq_len", "device", "use_tokenizer", "embedding_dropout"})),
    "SpatialRescaler": ("ldm.modules.encoders.modules.SpatialRescaler", frozenset({
        "n_stages", "method", "multiplier", "in_channels", "out_channels", "bias"})),
    "FrozenCLIPEmbedder": ("ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                           frozenset({"version", "device", "max_length"})),
}
# Keys of the original Encoder/Decoder (`ddconfig`); they swallow any other key silently (**ignore_kwargs).
ORIGINAL_DDCONFIG = frozenset({
    "ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "in_channels",
    "resolution", "z_channels", "double_z", "use_linear_attn", "attn_type", "give_pre_end", "tanh_out"})
SUBCONFIGS = ("unet_config", "first_stage_config", "cond_stage_config")
# Removed from every exported node: where the weights came from, and training schedules.
CLEARED = ("ckpt_path", "ignore_keys", "load_only_unet", "scheduler_config", "reset_ema", "reset_num_ema_updates")
# Our options that only act in training: dropped (with a note when set) so that the original accepts the config.
TRAINING_ONLY = {
    "min_snr_gamma": "min-SNR-gamma loss weighting",
    "offset_noise_strength": "offset noise in training",
    "ucg_rate": "conditioning dropout for classifier-free guidance training",
    "ucg_training": "conditioning dropout for classifier-free guidance training",
    "make_it_fit": "restoring a checkpoint of another width",
    "learn_logvar": "training the loss's logvar",
    "ema_decay": "the weight EMA (its weights are swapped in or dropped by the export)",
    "tokenizer_path": "a local tokenizer folder",
    "cache_size": "a caption feature cache",
    "lr_g_factor": "the generator's learning-rate factor",
}
# What an option the original lacks does to the exported model when the original code builds it.
CONSEQUENCES = {
    "ddconfig.norm_num_groups": "the original Encoder/Decoder always use 32 GroupNorm groups and silently ignore "
                                "this key while loading still passes (diffusers' original_config route too), so "
                                "their outputs are wrong",
    "norm_num_groups": "the original UNetModel always uses 32 GroupNorm groups (it refuses this key; diffusers' "
                       "original_config route ignores it), so outputs are wrong",
    "zero_terminal_snr": "the original rebuilds the standard schedule from linear_start/linear_end (as does "
                         "diffusers' original_config route), so sampling uses the wrong noise levels",
    "latent_stats": "per-channel latent standardisation (latent_mean/latent_std) does not exist in the original, "
                    "which scales latents by scale_factor only, so latents are mis-scaled",
    "quantizer_config": "vector-quantizer options the original VectorQuantizer does not have",
}
_GENERIC = "the original code has no such parameter: it either refuses the config (TypeError) or ignores the key"


@dataclass
class CompatReport:
    """What the original code cannot reproduce (`reasons`) and which training-only options were dropped (`notes`)."""

    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        """True when the original code computes the same outputs from the exported config and weights."""
        return not self.reasons


@dataclass
class Export:
    """An export ready to write: `config` ({"model": ...}, plain), the CompVis state dict, and facts about them."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    report: CompatReport
    kind: str  # "diffusion" or "autoencoder"
    ema: bool
    global_step: int | None

    def yaml(self) -> str:
        """The config as YAML; a marked config gets a warning comment on top and the `MARK_KEY` section."""
        doc = dict(self.config)
        header = ""
        if self.report.reasons:
            doc[MARK_KEY] = {"original_compatible": False, "reasons": list(self.report.reasons)}
            header = ("# WARNING: NOT COMPATIBLE with the original CompVis code or diffusers' original_config route:\n"
                      + "".join(f"#   - {reason}\n" for reason in self.report.reasons)
                      + "# Load it with this project (scripts/*.py --config ... --ckpt ...) or export to diffusers.\n")
        return header + OmegaConf.to_yaml(OmegaConf.create(doc))


def _defaults(cls: type) -> dict[str, Any]:
    """Default values of all constructor parameters along the MRO (subclasses win; **kwargs reach the base)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.default is not inspect.Parameter.empty:
                out[param.name] = param.default
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _explain(key: str, value: Any, where: str = "") -> str:
    return f"{key}={value!r}: {CONSEQUENCES.get(where + key, CONSEQUENCES.get(key, _GENERIC))}"


def _check_ddconfig(ddconfig: dict[str, Any], path: str, report: CompatReport) -> None:
    """Flag ddconfig keys the original Encoder/Decoder ignore; drop ours when they hold the original behaviour."""
    for key in list(ddconfig):
        if key in ORIGINAL_DDCONFIG:
            continue
        if key == "norm_num_groups" and ddconfig[key] == ORIGINAL_GROUPS:
            del ddconfig[key]
        else:
            report.reasons.append(f"{path}.{_explain(key, ddconfig[key], 'ddconfig.')}")


def _rewrite(node: dict[str, Any], path: str, report: CompatReport) -> type:
    """Turn one {target, params} node (in place) into its original form; returns the class it names."""
    target = str(node.get("target", ""))
    cls = resolve_target(target, f"{path}.target")
    original = ORIGINAL_CLASSES.get(cls.__name__) if cls.__module__.startswith("ldm.") else None
    if original is None:
        report.reasons.append(f"{path}.target={target}: the original code has no such class")
    else:
        node["target"] = original[0]
    params = node.get("params") or {}
    if cls.__name__ == "ClassEmbedder" and params.pop("add_null_class", False):
        # the same table: ours has n_classes + 1 rows with the null class last, the original n_classes rows
        params["n_classes"] = int(params.get("n_classes", 1000)) + 1
    defaults = _defaults(cls)
    for key in list(params):
        value = params[key]
        if key in CLEARED:
            del params[key]
        elif key in SUBCONFIGS:
            if isinstance(value, dict):
                _rewrite(value, f"{path}.params.{key}", report)
        elif key == "lossconfig":
            params[key] = dict(INFERENCE_LOSS)
        elif key == "ddconfig" and isinstance(value, dict):
            _check_ddconfig(value, f"{path}.params.ddconfig", report)
        elif original is not None and key not in original[1]:
            if key in defaults and _plain(value) == _plain(defaults[key]):
                del params[key]  # our option, left at the original behaviour
            elif key in TRAINING_ONLY:
                del params[key]
                report.notes.append(f"{path}.params.{key}={value!r} dropped: {TRAINING_ONLY[key]} (training only; "
                                    "sampling is unchanged)")
            else:
                report.reasons.append(f"{path}.params.{_explain(key, value)}")
    if params.get("parameterization", "eps") not in ("eps", "x0"):
        report.reasons.append(f"{path}.params.parameterization={params['parameterization']!r}: CompVis "
                              "latent-diffusion and stable-diffusion v1 accept only eps and x0 (SD2's code and "
                              "diffusers read v)")
    if cls.__name__ == "UNetModel" and params.get("num_head_channels", -1) != -1:
        report.notes.append(f"{path}.params.num_head_channels={params['num_head_channels']}: the original code reads "
                            "it, diffusers' original_config route does not (it needs num_heads); for diffusers use "
                            "--format diffusers")
    return cls


def _model_kind(cls: type) -> str:
    from ldm.models.autoencoders.adversarial import AdversarialAutoencoder
    from ldm.models.diffusion.denoising_diffusion import DDPM

    if issubclass(cls, DDPM):
        return "diffusion"
    if issubclass(cls, AdversarialAutoencoder):
        return "autoencoder"
    raise ConfigError(f"model.target: cannot export {cls.__name__}; export takes DDPM / LatentDiffusion models and "
                      "AutoencoderKL / VQModel autoencoders")


def original_config(config: DictConfig | dict) -> tuple[dict[str, Any], CompatReport, type]:
    """({"model": original-style model config}, report, model class) from a run's merged config (see module doc).

    The learnt scale_factor is not known here; `prepare_export` writes it from the checkpoint."""
    config = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    if "model" not in config:
        raise ConfigError("the config has no 'model' section")
    try:
        model = OmegaConf.to_container(config.model, resolve=True)
    except Exception as err:  # an interpolation that does not resolve: name it
        raise ConfigError(f"cannot resolve the model config's interpolations: {str(err).splitlines()[0]}") from err
    model = {k: model[k] for k in ("target", "params", "base_learning_rate") if k in model}
    report = CompatReport()
    cls = _rewrite(model, "model", report)
    params = model.setdefault("params", {})
    kind = _model_kind(cls)
    if kind == "diffusion" or "use_ema" in params:
        params["use_ema"] = False  # the EMA weights, if wanted, are already in model.*; no model_ema.* in the file
    return {"model": model}, report, cls


def export_state_dict(state: dict[str, torch.Tensor], kind: str, use_ema: bool) -> dict[str, torch.Tensor]:
    """The CompVis state dict: with `use_ema` the `model_ema.*` shadows replace the parameters they track (named as
    ldm.modules.ema.shadow_name: the parameter name relative to the EMA's module, dots removed); `model_ema.*` is
    dropped, and for autoencoders `loss.*`."""
    shadows = {k[len(EMA_PREFIX):]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    shadows = {k: v for k, v in shadows.items() if k not in RESERVED_BUFFERS}
    # training-only parts the exported config does not build: the loss (LPIPS / discriminator) of an autoencoder,
    # also inside a latent model's first stage, and any nested EMA (e.g. first_stage_model.model_ema.*)
    dropped = ("loss.",) if kind == "autoencoder" else ("first_stage_model.loss.",)
    out = {k: v for k, v in state.items()
           if not (k.startswith(EMA_PREFIX) or f".{EMA_PREFIX}" in k or k.startswith(dropped))}
    if not use_ema:
        return out
    if not shadows:
        raise CheckpointError("--ema: the checkpoint has no model_ema.* weights (trained without EMA); use --no-ema")
    prefix = "model." if kind == "diffusion" else ""  # DDPM tracks self.model, the autoencoders themselves
    used = set()
    for key in state:
        if key.startswith(EMA_PREFIX) or not key.startswith(prefix):
            continue
        name = shadow_name(key[len(prefix):])
        if name not in shadows:
            continue
        used.add(name)
        if key in out:
            if shadows[name].shape != out[key].shape:
                raise CheckpointError(f"EMA weight {EMA_PREFIX}{name} has shape {tuple(shadows[name].shape)} but "
                                      f"{key} has {tuple(out[key].shape)}")
            out[key] = shadows[name]
    left = sorted(set(shadows) - used)
    if left:
        raise CheckpointError(f"{len(left)} EMA buffers match no weight of the model, e.g. {EMA_PREFIX}{left[0]}; "
                              "is the checkpoint from this config? (--no-ema exports the raw weights)")
    return out


def cast_floating(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to `dtype`; integer and bool tensors (e.g. VQ indices, counters) kept."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def has_ema(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint (Lightning dict or state dict) holds EMA weights (`model_ema.*` shadows)."""
    state = extract_state_dict(checkpoint)
    return any(k.startswith(EMA_PREFIX) and k[len(EMA_PREFIX):] not in RESERVED_BUFFERS for k in state)


def prepare_export(config: DictConfig | dict, checkpoint: dict[str, Any], use_ema: bool | None = None,
                   dtype: torch.dtype | None = None) -> Export:
    """Everything to write for the compvis / safetensors formats. `use_ema` None: the EMA weights when the checkpoint
    has them. The learnt `scale_factor` buffer goes into the config (scale_by_std off, so nothing re-estimates it)."""
    cfg, report, cls = original_config(config)
    kind = _model_kind(cls)
    state = extract_state_dict(checkpoint)
    ema = has_ema(state) if use_ema is None else bool(use_ema)
    out = export_state_dict(state, kind, ema)
    params = cfg["model"]["params"]
    if "scale_factor" in out:
        params["scale_factor"] = float(out["scale_factor"])
        params["scale_by_std"] = False
    if dtype is not None:
        out = cast_floating(out, dtype)
    step = checkpoint.get("global_step")
    return Export(cfg, out, report, kind, ema, int(step) if isinstance(step, (int, torch.Tensor)) else None)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_metadata(export: Export, source_sha256: str) -> dict[str, str]:
    """The documented `META_*` entries of an exported safetensors file."""
    return {META_FORMAT: "pt", META_VERSION: str(FORMAT_VERSION), META_CONFIG: export.yaml(),
            META_SHA256: source_sha256, META_STEP: "" if export.global_step is None else str(export.global_step),
            META_EMA: json.dumps(export.ema), META_COMPATIBLE: json.dumps(export.report.compatible)}


def write_safetensors(path: str, export: Export, source_sha256: str) -> tuple[str, str]:
    """Write `path` (.safetensors) and the config beside it (`<name>.yaml`), both atomically; returns both paths."""
    from safetensors.torch import save

    yaml_path = path[: -len(".safetensors")] + ".yaml"
    data = save(unshare(export.state_dict)[0], metadata=safetensors_metadata(export, source_sha256))
    atomic_write(path, lambda f: f.write(data), expected_bytes=len(data))
    atomic_write(yaml_path, lambda f: f.write(export.yaml().encode()))
    return path, yaml_path


def write_compvis(folder: str, export: Export) -> tuple[str, str]:
    """Write `<folder>/config.yaml` and `<folder>/model.ckpt` ({"state_dict", "global_step"}: plain tensors and an
    int, so weights_only loads it; the original `sample_diffusion.py -r <folder>` reads global_step)."""
    ckpt = {"state_dict": {k: v.detach().contiguous() for k, v in export.state_dict.items()},
            "global_step": export.global_step or 0}
    ckpt_path, yaml_path = os.path.join(folder, COMPVIS_CKPT), os.path.join(folder, COMPVIS_CONFIG)
    atomic_save(ckpt, ckpt_path)
    atomic_write(yaml_path, lambda f: f.write(export.yaml().encode()))
    return yaml_path, ckpt_path
