"""Where FrozenCLIPEmbedder gets CLIP from: a local folder, or a hub id through the Hugging Face cache (downloading
only when online); offline without the files, one clear error naming the id, the files and where to put them."""
import pytest
import torch

from ldm.modules.encoders import pretrained
from ldm.modules.encoders.modules import FrozenCLIPEmbedder, PretrainedNotAvailableError
from ldm.util import ConfigError

from clip_helpers import NOT_CACHED, TINY_WIDTH, byte_chars, save_tiny_clip  # noqa: E402  (tests/ is on the path)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    return str(folder), save_tiny_clip(folder)


def test_local_folder(tiny_clip):
    folder, n = tiny_clip
    clip = FrozenCLIPEmbedder(version=folder, expected_vocab_size=n)
    tokens = clip.tokenize(["a cat"])["input_ids"][0]
    assert tokens[:4].tolist() == [n - 2, byte_chars().index("a") + 256, n - 3, n - 1]  # <start> a</w> cat</w> <end>
    assert (tokens[4:] == n - 1).all()  # padded with the end token, as SD v1
    z = clip(["a cat", ""])
    assert z.shape == (2, 77, TINY_WIDTH) and not clip.is_trainable
    assert all(k.startswith("transformer.text_model.") for k in clip.state_dict())


def test_offline_hub_id_not_cached_is_one_clear_error():
    with pytest.raises(PretrainedNotAvailableError) as err:
        FrozenCLIPEmbedder(version=NOT_CACHED)
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message  # scripts: one line, exit status 2
    for part in (NOT_CACHED, "HF_HUB_OFFLINE=1", "vocab.json", "merges.txt", "config.json",
                 "model.params.cond_stage_config.params.version=", pretrained._hub_cache()):
        assert part in message, part


def test_placeholder_tokenizer_is_refused(monkeypatch):
    """transformers 5 may hand back a 2-token tokenizer for a hub id it cannot find offline, instead of raising."""
    class Placeholder:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            return cls()

        def __len__(self):
            return 2

    with pytest.raises(PretrainedNotAvailableError, match=f"'{NOT_CACHED}' has 2 tokens, expected 49408.*vocab.json"):
        pretrained.load_tokenizer(NOT_CACHED, "FrozenCLIPEmbedder", "version", cls=Placeholder,
                                  expected_vocab=pretrained.CLIP_VOCAB_SIZE, files=FrozenCLIPEmbedder._files)


@pytest.mark.parametrize("offline, source, local_only", [("1", NOT_CACHED, True), ("", NOT_CACHED, False),
                                                         ("", "folder", True)])
def test_downloads_only_hub_ids_and_only_online(monkeypatch, tmp_path, offline, source, local_only):
    calls = []

    class Recorder:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            calls.append((name, kwargs))
            return cls()

    for name in pretrained.OFFLINE_VARIABLES:
        monkeypatch.setenv(name, offline)
    if source == "folder":
        source = str(tmp_path)
    pretrained.load_model(source, "FrozenCLIPEmbedder", "version", cls=Recorder)
    assert calls == [(source, {"local_files_only": local_only})]
    assert pretrained.hub_offline() is bool(offline)


def test_online_failure_names_the_id_and_the_fix(monkeypatch):
    class NoNetwork:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore text")

    for name in pretrained.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PretrainedNotAvailableError) as err:
        pretrained.load_model(NOT_CACHED, "FrozenCLIPEmbedder", "version", cls=NoNetwork, files="config.json")
    message = str(err.value)
    assert "couldn't connect" in message and "when it cannot be downloaded" in message and "\n" not in message
    assert NOT_CACHED in message and "config.json" in message


def test_local_folder_errors_name_the_folder_and_files(tmp_path):
    with pytest.raises(PretrainedNotAvailableError, match="'/no/such/clip', but that folder does not exist "
                                                          r"\(expected a folder holding config.json.*merges.txt\)"):
        FrozenCLIPEmbedder(version="/no/such/clip")
    with pytest.raises(PretrainedNotAvailableError, match=f"{tmp_path}.*vocab.json, merges.txt"):
        FrozenCLIPEmbedder(version=str(tmp_path))  # an empty folder


def test_sd_v1_text_weights_replace_the_loaded_ones(tiny_clip, tmp_path):
    """SD v1 checkpoints carry the CLIP text model (old transformers layout, with position_ids): its weights win."""
    folder, n = tiny_clip
    clip = FrozenCLIPEmbedder(version=folder, expected_vocab_size=n)
    other = str(tmp_path / "other")
    save_tiny_clip(other, seed=1)
    reference = FrozenCLIPEmbedder(version=other, expected_vocab_size=n)
    assert not torch.allclose(clip(["a cat"]), reference(["a cat"]))
    parent, source = torch.nn.Module(), torch.nn.Module()
    parent.cond_stage_model, source.cond_stage_model = clip, reference
    state = dict(source.state_dict())
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    result = parent.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(clip(["a cat"]), reference(["a cat"]))
