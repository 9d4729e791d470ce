"""Feature extractors for the generation metrics, picked by name: `inception`, `random` (tests, demo); CLIP models.

An extractor is a frozen module that maps uint8 images (B, 3, H, W) to `{"features": (B, D), "logits": (B, K)}`:
pool features for FID / KID, class logits for the Inception Score. It carries `name`, `num_features` and
`weights_id` (what the cached reference statistics are keyed by). The metrics in `ldm.eval.metrics` hand these
features to torchmetrics through its custom-feature-module interface, so every extractor takes the same path.

- `inception`: torchmetrics' / torch-fidelity's InceptionV3 (the TF-FID port). Its weights
  `weights-inception-2015-12-05-6726825d.pth` are downloaded once into the torch hub cache when online
  (hash-checked), read with weights_only, and named in a clear error offline (`ldm.weights`); a local copy:
  `--inception-weights PATH` / `inception_weights: PATH`.
- `random`: `RandomFeatures`, a fixed-seed small conv net: no download, NOT comparable to published numbers.
- CLIP (CLIP score): `load_clip(hub id or folder)` -> (CLIP model, CLIPProcessor) from transformers (downloaded
  into the Hugging Face cache when online; `--clip NAME_OR_DIR` / `clip: ...`).
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch
from torch import nn

from ldm.util import ConfigError
from ldm.weights import MissingWeightsError, fetch_weights

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's port of the TF FID Inception
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
INCEPTION_WEIGHTS_FLAG = "--inception-weights PATH (config: inception_weights: PATH)"
CLIP_FLAG = "--clip NAME_OR_DIR (config: clip: NAME_OR_DIR)"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # torchmetrics' CLIPScore default
RANDOM_SEED = 0


class RandomFeatures(nn.Module):
    """A fixed-seed random conv net (3 strided convs, mean and std pooled, 64 features, 10 logits): the test and demo
    extractor. Deterministic, any image size, no download; its FID/KID are NOT comparable to Inception numbers."""

    name = "random"
    num_features = 64
    weights_id = f"random-convnet-v1-seed{RANDOM_SEED}"

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the same net every time, without touching the caller's RNG
            torch.manual_seed(RANDOM_SEED)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                     nn.Conv2d(32, self.num_features // 2, 3, 2, 1), nn.ReLU())
            self.head = nn.Linear(self.num_features, 10)
            for module in self.modules():  # He init: unit-scale features, so the numbers are readable
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> RandomFeatures:
        """Always in eval mode: a fixed function."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, 3, H, W) -> {"features": (B, 64), "logits": (B, 10)}."""
        x = self.net(images.float() / 127.5 - 1.0).flatten(2)
        features = torch.cat([x.mean(-1), x.std(-1, unbiased=False)], dim=1)
        return {"features": features, "logits": self.head(features)}


class InceptionFeatures(nn.Module):
    """torchmetrics' InceptionV3 (torch-fidelity's TF-compatible port): 2048 pool features and the 1008 unbiased
    logits the Inception Score uses. `weights_path`: a local copy of INCEPTION_FILENAME (default: the torch hub
    cache, downloaded when online)."""

    name = "inception"
    num_features = 2048
    weights_id = "pt_inception-2015-12-05-6726825d"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        from ldm.checkpoint import load_state_dict

        # Not hash-checked, as torch-fidelity and torchmetrics do not: the 8 hex digits in this name are also in
        # pytorch-fid's differently named file, so they cannot be relied on as the SHA-256 prefix of this one
        path = fetch_weights(INCEPTION_URL, INCEPTION_FILENAME, "FID/KID/IS (Inception features)",
                             INCEPTION_WEIGHTS_FLAG, weights_path, check_hash=False)
        try:
            import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:
            raise MissingWeightsError("the Inception features need the package torch-fidelity: "
                                      "`pip install torch-fidelity` (or use --features random)") from err
        state = load_state_dict(path)  # weights_only; torch-fidelity's own reader would unpickle a local file
        # torch-fidelity loads its weights inside the constructor: hand it the tensors read above instead
        with mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Always in eval mode: a fixed function."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, 3, H, W) -> {"features": (B, 2048), "logits": (B, 1008)} (resized to 299 px inside)."""
        features, logits = self.net._torch_fidelity_forward(images)
        return {"features": features.reshape(len(images), -1), "logits": logits.reshape(len(images), -1)}


FEATURES = {"inception": InceptionFeatures, "random": RandomFeatures}


def build_features(name: str, inception_weights: str | None = None) -> nn.Module:
    """The extractor called `name` (`inception` or `random`); ConfigError-style errors for unknown names and
    missing weights."""
    if name not in FEATURES:
        raise ConfigError(f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURES)}")
    if name == "inception":
        return InceptionFeatures(inception_weights)
    return FEATURES[name]()


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Features and logits (float32, on the CPU) of uint8 images (N, 3, H, W), in batches on the extractor's device."""
    device = next(extractor.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        out = extractor(images[start:start + batch_size].to(device))
        for key, value in out.items():
            parts.setdefault(key, []).append(value.float().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


class ClipEmbeddings(nn.Module):
    """A transformers CLIPModel whose get_image_features / get_text_features return the projected embeddings as
    tensors: transformers 5 returns output objects there, which torchmetrics' CLIPScore (1.9) cannot normalise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_clip(name_or_path: str) -> tuple[Any, Any]:
    """(CLIPModel, CLIPProcessor) from a hub id (HF cache; downloaded when online) or a local folder; a one-line
    MissingWeightsError naming the model and how to provide it otherwise."""
    from transformers import CLIPModel, CLIPProcessor

    from ldm.modules.encoders.pretrained import hub_offline, looks_like_path

    local = looks_like_path(name_or_path)
    try:
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=hub_offline() or local)
        processor = CLIPProcessor.from_pretrained(name_or_path, local_files_only=hub_offline() or local)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = (f"the folder '{name_or_path}' must hold a transformers CLIP model and its processor" if local else
                 f"'{name_or_path}' is a Hugging Face hub id: offline (HF_HUB_OFFLINE=1) its files must be in the "
                 f"Hugging Face cache (`hf download {name_or_path}` where there is internet)")
        raise MissingWeightsError(f"CLIP score: cannot load the CLIP model '{name_or_path}' ({first}); {where}, "
                                  f"or give a local folder with {CLIP_FLAG}") from err
    model.eval().requires_grad_(False)
    return ClipEmbeddings(model), processor
