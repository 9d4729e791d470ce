"""Inference on trained diffusion models, shared by scripts/txt2img.py, img2img.py, sample_diffusion.py (and the
inpainting / super-resolution scripts). No Lightning training glue; each module is one concept:

- `loading`: `resolve_source(resume=None, config=None, ckpt=None) -> ModelSource` (checks paths, reads configs
  only) and `load_model(source, device) -> model` (no training losses, weights_only checkpoint).
- `model_info`: `describe_model(config) -> ModelInfo` (conditioning kind, classes, downsampling factor, sizes,
  EMA), read from the config before any weights exist.
- `devices`: `check_device(name)`, `autocast_dtype(precision, device)`, `autocast(device, dtype)`.
- `conditioning`: prompts -> captions / class labels (`check_prompts`), `check_scale`, `guidance_pair(model,
  values, scale) -> (cond, uncond)`.
- `sampling`: `initial_noise(shape, seeds, device)`, `sample(model, noise, sampler, steps, cond, uncond, scale,
  eta, use_ema, generator, **sampler_opts)` with a tqdm bar through the sampler callback.
- `codec`: `encode_images(model, images)`, `decode_latents(model, z)`.
- `images`: `open_image(path, channels, flag)`, `image_to_tensor`, `to_pil`, `to_uint8`, `image_grid`,
  `save_png(image, path, metadata)`, `read_png_metadata(path)`.
- `files`: numbered output names (`next_index`, `count_done`) and `atomic_write(path, write)` (from `ldm.files`).
- `validation`: flag checks that need no model (`check_sampler`, `check_sampler_options`, `check_strength`,
  `check_size`, `read_prompts`, `check_positive`, `check_outdir`, `check_output_file`); all raise
  `errors.UsageError`.
- `memory`: a lower-bound estimate of a batch's memory from the config (`diffusion_batch_bytes`,
  `autoencoder_batch_bytes`) and `check_fits(needed, batch, device, flag, advice)` against the free memory.
- `generate`: the txt2img / img2img loop (`Settings`, `generate`, `batch_samples`); `eval_samples`: resumable
  numbered samples + .npz for evaluation; `cli`: the scripts' shared flags, `prepare(args)` and `run(main)`.
"""
