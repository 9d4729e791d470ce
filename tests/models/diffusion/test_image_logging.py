"""log_images rows: text rendered as images, grids of frames, the logged diffusion steps."""
import torch

from ldm.models.diffusion.image_logging import (conditioning_images, diffusion_row, frames_to_grid, label_texts,
                                                logged_timesteps, text_images)


def test_text_images_are_rgb_in_range_and_differ_by_text():
    imgs = text_images(["a red circle", "", "a blue square at the top"], (32, 48))
    assert imgs.shape == (3, 3, 32, 48) and imgs.min() >= -1 and imgs.max() <= 1
    assert torch.all(imgs[1] == 1.0)  # empty caption: white
    assert imgs[0].min() < 0 and not torch.equal(imgs[0], imgs[2])


def test_conditioning_images_for_captions_labels_and_images():
    batch = {"caption": ["x", "y"], "class_label": torch.tensor([3, 5])}
    assert conditioning_images(["x", "y"], "caption", batch, (16, 16), 2).shape == (2, 3, 16, 16)
    assert conditioning_images(batch, "class_label", batch, (16, 16), 1).shape == (1, 3, 16, 16)
    assert label_texts(batch, batch["class_label"]) == ["3: x", "5: y"]
    assert label_texts({}, torch.tensor([7])) == ["class 7"]
    img = torch.rand(2, 3, 8, 8) * 4 - 2
    assert conditioning_images(img, "lr", batch, (8, 8), 2).abs().max() <= 1
    assert conditioning_images(torch.randn(2, 77, 8), "x", batch, (8, 8), 2) is None


def test_logged_timesteps_and_grids():
    assert logged_timesteps(1000, 200) == [0, 200, 400, 600, 800, 999]
    frames = torch.zeros(5, 2, 3, 8, 8)
    assert frames_to_grid(frames).shape == (1, 3, 2 * 10 + 2, 5 * 10 + 2)
    z = torch.ones(2, 3, 8, 8)
    q = lambda z, t, n: z * (t.float() / 100).view(-1, 1, 1, 1)  # noqa: E731
    row = diffusion_row(q, lambda v: v, z, 100, 50)
    assert row.shape == (1, 3, 22, 32)  # 3 frames: t = 0, 50, 99
