"""Stage 2 of latent diffusion: the diffusion LightningModules (`ddpm.DDPM`, `ddpm.LatentDiffusion`) and their parts.

Import the models from `ldm.models.diffusion.ddpm` (the CompVis path). Samplers are functions in
`ldm.diffusion.samplers`; the models hand them a plain `model_fn(x, t, cond)` (`DDPM.model_fn`).
"""
