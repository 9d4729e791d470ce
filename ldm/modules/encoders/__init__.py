"""Conditioning encoders; the public classes live in `ldm.modules.encoders.modules` (CompVis path)."""
