"""Package exports, CompVis import paths and placeholder losses via instantiate_from_config."""

import pytest
import torch

from ldm.util import instantiate_from_config


def test_compvis_import_paths():
    import ldm.modules.losses as losses
    from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator
    from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

    assert losses.LPIPSWithDiscriminator is LPIPSWithDiscriminator
    assert losses.VQLPIPSWithDiscriminator is VQLPIPSWithDiscriminator
    for name in ("NLayerDiscriminator", "LPIPS", "DummyLoss"):
        assert hasattr(losses, name)


def test_configs_instantiate_losses():
    kl = instantiate_from_config({"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                                  "params": {"disc_start": 50001, "kl_weight": 1e-6, "disc_weight": 0.5,
                                             "perceptual_weight": 0.0}})
    assert kl.discriminator_iter_start == 50001 and kl.kl_weight == 1e-6
    vq = instantiate_from_config({"target": "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                  "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0,
                                             "disc_weight": 0.75, "codebook_weight": 1.0, "n_classes": 8192,
                                             "perceptual_weight": 0}})
    assert vq.n_classes == 8192


def test_placeholder_losses():
    dummy = instantiate_from_config({"target": "ldm.modules.losses.DummyLoss"})
    assert list(dummy.parameters()) == [] and dummy.state_dict() == {}
    with pytest.raises(RuntimeError, match="inference-only"):
        dummy(torch.zeros(1))
    identity = instantiate_from_config({"target": "torch.nn.Identity"})
    assert isinstance(identity, torch.nn.Identity)
