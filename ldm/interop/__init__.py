"""Exporting models to other code bases: CompVis-style checkpoints and configs, diffusers pipelines."""
