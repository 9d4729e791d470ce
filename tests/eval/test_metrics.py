"""ldm.eval.metrics on torchmetrics with the random test extractor: FID / KID properties, IS, CLIP score with a toy
encoder, PSNR / SSIM known values, reconstruction metrics."""
import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from ldm.eval import metrics as M
from ldm.eval.features import RandomFeatures, extract
from ldm.eval.reference import from_model_range


@pytest.fixture(scope="module")
def images():
    """96 smooth random 32 px images in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(96, 3, 8, 8, generator=g), size=32, mode="bilinear") * 2 - 1


@pytest.fixture(scope="module")
def features(images):
    return extract(RandomFeatures(), from_model_range(images))


def feats_of(images):
    return extract(RandomFeatures(), from_model_range(images))["features"]


def test_fid_of_a_set_with_itself_is_zero(features):
    assert abs(M.fid(features["features"], features["features"])) < 1e-6


@pytest.mark.parametrize("change", ["shift", "blur"])
def test_fid_and_kid_grow_monotonically_with_the_change(images, features, change):
    levels = {"shift": [lambda x, s=s: (x + s).clamp(-1, 1) for s in (0.1, 0.2, 0.4)],
              "blur": [lambda x, k=k: TF.gaussian_blur(x, k) for k in (3, 5, 9)]}[change]
    real = features["features"]
    fids = [M.fid(real, feats_of(level(images))) for level in levels]
    kids = [M.kid(real, feats_of(level(images)), subsets=10)[0] for level in levels]
    assert 0 < fids[0] < fids[1] < fids[2], fids
    assert 0 < kids[0] < kids[1] < kids[2], kids


def test_kid_is_unbiased_on_two_halves_of_one_set(images, features):
    real = features["features"]
    halves, _ = M.kid(real[:48], real[48:], subsets=20, subset_size=32)
    shifted, _ = M.kid(real[:48], feats_of((images[48:] + 0.2).clamp(-1, 1)), subsets=20, subset_size=32)
    assert abs(halves) < 0.05 * shifted, (halves, shifted)
    assert M.kid(real, real, subsets=5, subset_size=32) == M.kid(real, real, subsets=5, subset_size=32)  # seeded


def test_inception_score_counts_confident_distinct_classes():
    confident = torch.eye(8).repeat(4, 1) * 50  # 32 sharp predictions spread over 8 classes
    mean, _ = M.inception_score(confident, splits=1)
    assert mean == pytest.approx(8, rel=1e-3)
    assert M.inception_score(torch.zeros(32, 8), splits=4)[0] == pytest.approx(1.0)  # uniform: no information


COLORS = {"red": 0, "green": 1, "blue": 2}


class ToyClip(nn.Module):
    """A fixed 'CLIP': an image is its mean colour, a caption the one-hot of its colour word."""

    config = None  # torchmetrics reads config.text_config when there is one

    def get_image_features(self, pixel_values):
        return pixel_values.float().mean(dim=(2, 3))

    def get_text_features(self, input_ids, attention_mask=None):
        return torch.nn.functional.one_hot(input_ids[:, 0], 3).float()


class ToyProcessor:
    def __call__(self, images=None, text=None, return_tensors=None, padding=None):
        if images is not None:
            return {"pixel_values": torch.stack(images).float()}
        ids = torch.tensor([[next(COLORS[w] for w in t.split() if w in COLORS)] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_clip_score_is_higher_for_matching_than_for_shuffled_captions():
    g = torch.Generator().manual_seed(0)
    images, captions = [], []
    for i in range(12):
        color = list(COLORS)[i % 3]
        image = torch.randint(0, 60, (3, 16, 16), generator=g)
        image[COLORS[color]] += 180
        images.append(image.to(torch.uint8))
        captions.append(f"a {color} square")
    images = torch.stack(images)
    toy = lambda: (ToyClip(), ToyProcessor())  # noqa: E731
    matching = M.clip_score(images, captions, toy)
    shuffled = M.clip_score(images, captions[1:] + captions[:1], toy)
    assert 0 <= shuffled < matching <= 100
    assert matching > 80 and shuffled < 40
    with pytest.raises(ValueError, match="2 images but 3 captions"):
        M.clip_score(images[:2], captions[:3], toy)


def test_psnr_and_ssim_known_values():
    x = torch.rand(4, 3, 32, 32) * 1.6 - 0.8
    assert math.isinf(M.psnr(x, x)) and M.psnr(x, x) > 0
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    # a constant error of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE 0.0025, PSNR = 10 log10(1 / 0.0025) = 26.02 dB
    assert M.psnr(x, x + 0.1) == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-3)
    assert M.ssim(x, torch.zeros_like(x)) < 0.5


def test_reconstruction_metrics_in_batches(images):
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(-1, 1)
    same = M.reconstruction_metrics(images[:8], images[:8], RandomFeatures(), batch_size=3)
    assert math.isinf(same["psnr"]) and same["ssim"] == pytest.approx(1.0) and abs(same["rfid"]) < 1e-6
    worse = M.reconstruction_metrics(images[:8], noisy[:8], RandomFeatures(), batch_size=3)
    assert worse["psnr"] == pytest.approx(M.psnr(images[:8], noisy[:8]), rel=1e-4)  # batch means = whole-set mean
    assert worse["ssim"] < 1 and worse["rfid"] > 0 and "lpips" not in worse
    with pytest.raises(ValueError, match=r"features \(N >= 2, D\)"):
        M.fid(torch.zeros(1, 4), torch.zeros(3, 4))



class PairDistance(nn.Module):
    """Stands in for LPIPS (whose VGG16 takes long to build): per-pair mean |a - b| as (B, 1, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # the meter reads the device from the parameters

    def forward(self, a, b):
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_is_the_mean_over_pairs_of_the_network_distance(images):
    target, pred = images[:5], (images[:5] + 0.2).clamp(-1, 1)
    got = M.reconstruction_metrics(target, pred, lpips_net=PairDistance(), batch_size=2)["lpips"]
    assert got == pytest.approx((pred - target).abs().mean().item(), rel=1e-5)
