#!/usr/bin/env python
"""Export a trained model for other code: one safetensors file, a CompVis folder, or a diffusers pipeline.

    python scripts/export.py -r logs/<run> --format safetensors --out model.safetensors   # + model.yaml beside it
    python scripts/export.py -r logs/<run> --format compvis --out exported/<name>         # config.yaml + model.ckpt
    python scripts/export.py -r logs/<run> --format diffusers --out exported/<name>-diffusers
    python scripts/export.py --config my.yaml --ckpt model.ckpt --format safetensors --out m.safetensors --dtype fp16

safetensors and compvis write the CompVis key layout (EMA weights in model.* unless --no-ema; no model_ema.*, no
autoencoder loss.*) and an original-style config: interpolations resolved, the learnt scale_factor in
model.params.scale_factor, no training keys, data or lightning sections. The original CompVis code
(`scripts/sample_diffusion.py -r <compvis folder>`) and diffusers' `original_config` route read them.
The safetensors metadata holds that config (key ldm_config), ldm_export_version, ldm_source_sha256,
ldm_global_step and ldm_ema (see ldm/interop/compvis.py).

Options the original code does not have (e.g. norm_num_groups != 32, as configs/overlays/cpu.yaml sets; a
zero-terminal-SNR schedule; v-prediction) change what it would compute: they are printed as warnings, the config is
marked (a comment on top and `ldm_export: {original_compatible: false, reasons: [...]}`), and --format compvis
refuses such models unless --allow-incompatible. The diffusers format supports them.
Bad input fails before anything is written; an existing --out needs --force.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.errors import UsageError  # noqa: E402
from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)

FORMATS = ("safetensors", "compvis", "diffusers")


def get_parser() -> argparse.ArgumentParser:
    parser = entry.script_parser(__doc__)
    entry.add_model_arguments(parser)
    for action in parser._actions:  # the shared model flags, worded for an export
        if action.dest == "ema":
            action.help = "export the EMA weights into model.* (default: when the checkpoint has them)"
        elif action.dest == "precision":
            action.help = argparse.SUPPRESS  # sampling only; refused below in favour of --dtype
        elif action.dest == "device":
            action.help = "torch device for loading the model (--format diffusers only; default: as the samplers)"
    group = parser.add_argument_group("export")
    group.add_argument("--format", required=True, choices=FORMATS, help="safetensors: one .safetensors file and "
                       "<name>.yaml; compvis: a folder with config.yaml + model.ckpt; diffusers: a pipeline folder")
    group.add_argument("--out", required=True, help="the .safetensors file, or the folder (compvis, diffusers)")
    group.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                       help="cast floating-point weights (default: as stored in the checkpoint)")
    group.add_argument("--force", action="store_true", help="overwrite an existing --out")
    group.add_argument("--allow-incompatible", action="store_true", help="--format compvis: write a model the "
                       "original code cannot reproduce anyway (its config is marked)")
    group.add_argument("--skip-check", action="store_true", help="do not rebuild the model from the exported config "
                       "to check that the exported weights load strictly")
    return parser


def check_out(path: str, fmt: str, force: bool) -> None:
    """UsageError for a wrong kind of --out, or one that exists without --force."""
    from ldm.inference.validation import check_outdir, check_output_file

    if fmt == "safetensors":
        if not path.endswith(".safetensors"):
            raise UsageError(f"--out {path}: --format safetensors writes a file named *.safetensors")
        check_output_file(path, "--out")
        existing = [p for p in (path, path[: -len(".safetensors")] + ".yaml") if os.path.exists(p)]
    else:
        check_outdir(path, "--out")
        existing = [path] if os.path.isdir(path) and os.listdir(path) else []
    if existing and not force:
        raise UsageError(f"--out: {existing[0]} already exists; pass --force to overwrite it")


def check_loads(export) -> None:
    """Build the model from the exported config (this project's code) and load the exported weights strictly."""
    from ldm.checkpoint import CheckpointError
    from ldm.util import instantiate_from_config

    model = instantiate_from_config(export.config["model"], "model")
    missing, unexpected = model.load_state_dict(export.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"the exported weights do not fit the exported config: {len(missing)} missing "
                              f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def export_diffusers(args: argparse.Namespace, source) -> dict:
    """--format diffusers: load the model and hand it to ldm.interop.diffusers.export_diffusers (which writes a
    staging folder and renames it); --force replaces an earlier export only after the new one is complete."""
    import shutil

    import torch

    from ldm.files import staging_dir
    from ldm.inference import cli
    from ldm.inference.devices import check_device
    from ldm.inference.loading import load_model
    from ldm.inference.model_info import describe_model
    from ldm.interop.compvis import DTYPES
    from ldm.interop.diffusers import export_diffusers as to_diffusers
    from ldm.interop.diffusers import is_diffusers_path

    out = os.path.abspath(args.out)
    replace = os.path.isdir(out) and bool(os.listdir(out))
    if replace and not is_diffusers_path(out):
        raise UsageError(f"--out {args.out}: --force replaces an earlier diffusers export only, and this folder is "
                         "not one (no model_index.json, unet/ or diffusers config.json)")
    device = check_device(args.device)
    ema = cli.resolve_ema(describe_model(source.config), args.ema)
    model = load_model(source, device)
    target = os.path.join(staging_dir(out), "new") if replace else out
    try:
        warnings = to_diffusers(model, source.config, target, DTYPES.get(args.dtype) or torch.float32, ema)
        if replace:
            old = target[: -len("new")] + "old"
            os.rename(out, old)
            try:
                os.rename(target, out)
            except OSError:
                os.rename(old, out)  # the earlier export stays where it was
                raise
    finally:
        if replace:
            shutil.rmtree(os.path.dirname(target), ignore_errors=True)
    cli.warn(warnings)
    print(f"wrote the diffusers pipeline {args.out} ({'EMA' if ema else 'raw'} weights)")
    return {"format": "diffusers", "files": [args.out], "ema": ema}


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    from ldm.checkpoint import load_checkpoint
    from ldm.inference import cli
    from ldm.files import human_size
    from ldm.inference.loading import resolve_source
    from ldm.interop import compvis

    if args.precision is not None:
        raise UsageError("--precision is for sampling; an export casts its weights with --dtype fp16|bf16|fp32")
    source = resolve_source(args.resume, args.config, args.ckpt, args.from_diffusers)
    check_out(args.out, args.format, args.force)
    if args.format == "diffusers":
        return export_diffusers(args, source)
    if os.path.isdir(source.ckpt):  # --from-diffusers: its weights are converted to ours when the model loads
        from ldm.inference.loading import load_model

        checkpoint, source_sha256 = {"state_dict": load_model(source).state_dict()}, ""
    else:
        checkpoint, source_sha256 = load_checkpoint(source.ckpt), compvis.sha256_file(source.ckpt)
    if args.ema and not compvis.has_ema(checkpoint):
        raise UsageError(f"--ema: {source.ckpt} has no EMA weights (model_ema.*); drop --ema")
    export = compvis.prepare_export(source.config, checkpoint, args.ema, compvis.DTYPES.get(args.dtype))
    for note in export.report.notes:
        cli.warn(note)
    for reason in export.report.reasons:
        cli.warn(f"NOT ORIGINAL-COMPATIBLE: {reason}")
    if not export.report.compatible:
        if args.format == "compvis" and not args.allow_incompatible:
            options = ", ".join(reason.split(": ", 1)[0] for reason in export.report.reasons)
            raise UsageError(f"--format compvis: the original CompVis code would not reproduce this model ({options}; "
                             "see the warnings above); pass --allow-incompatible to write it anyway (its config.yaml "
                             "is marked), or use --format diffusers")
        cli.warn("the exported config is marked 'ldm_export: {original_compatible: false}'")
    if not args.skip_check:
        check_loads(export)
    if args.format == "safetensors":
        files = compvis.write_safetensors(args.out, export, source_sha256)
    else:
        files = compvis.write_compvis(args.out, export)
    size = sum(os.path.getsize(f) for f in files)
    print(f"wrote {' and '.join(files)} ({len(export.state_dict)} tensors, {human_size(size)}, "
          f"{'EMA' if export.ema else 'raw'} weights, global_step {export.global_step})")
    return {"format": args.format, "files": list(files), "ema": export.ema, "compatible": export.report.compatible,
            "reasons": list(export.report.reasons), "notes": list(export.report.notes)}


if __name__ == "__main__":
    sys.exit(entry.run(main))
