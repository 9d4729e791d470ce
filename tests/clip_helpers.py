"""A tiny CLIP text model + tokenizer written to a folder (the layout of openai/clip-vit-large-patch14, at width 32),
shared by the encoder, SD v1 and interop tests; `import clip_helpers` (tests/conftest.py puts tests/ on the path)."""
import json
import os

import torch

TINY_WIDTH = 32
NOT_CACHED = "ldm-tests/clip-that-is-not-cached"  # a hub id no cache holds


def byte_chars():
    """The 256 printable stand-ins for bytes of CLIP's byte-level BPE (each one a base token)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b if b in keep else next(extra)) for b in range(256)]


def save_tiny_clip(folder, max_length=77, seed=0):
    """Write vocab.json + merges.txt (a CLIPTokenizer that knows "cat" and "red" as words) and a random 2-layer
    CLIPTextModel of width TINY_WIDTH into `folder` with save_pretrained; returns the vocabulary size."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    chars = byte_chars()
    words = ["re", "red</w>", "ca", "cat</w>"]  # "cat</w>" right before the two special tokens
    tokens = chars + [c + "</w>" for c in chars] + words + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\nc a\nca t</w>\nr e\nre d</w>\n")
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                              model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    n = len(vocab)
    config = CLIPTextConfig(vocab_size=n, hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                            bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(folder)
    return n
