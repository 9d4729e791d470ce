"""x_transformer: the CompVis state_dict layout, attention maths, masks and argument errors."""
import pytest
import torch

from ldm.modules.x_transformer import Attention, Encoder, TransformerWrapper


def compvis_keys(depth, cross_attend=False):
    """Parameter names of CompVis `TransformerWrapper(attn_layers=Encoder(...))` (pre-norm, no GLU, no memory)."""
    keys = ["token_emb.weight", "pos_emb.emb.weight"]
    kinds = ("a", "c", "f") if cross_attend else ("a", "f")
    for i, kind in enumerate(kinds * depth):
        p = f"attn_layers.layers.{i}."
        keys += [p + "0.weight", p + "0.bias"]
        if kind == "f":
            keys += [p + "1.net.0.0.weight", p + "1.net.0.0.bias", p + "1.net.2.weight", p + "1.net.2.bias"]
        else:
            keys += [p + "1.to_q.weight", p + "1.to_k.weight", p + "1.to_v.weight", p + "1.to_out.weight",
                     p + "1.to_out.bias"]
    return keys + ["norm.weight", "norm.bias", "to_logits.weight", "to_logits.bias"]


@pytest.mark.parametrize("cross_attend", [False, True])
def test_state_dict_layout_matches_compvis(cross_attend):
    model = TransformerWrapper(num_tokens=50, max_seq_len=12,
                               attn_layers=Encoder(dim=16, depth=2, cross_attend=cross_attend))
    assert list(model.state_dict()) == compvis_keys(2, cross_attend)


def test_shapes_of_the_ldm_txt2img_text_encoder():
    # LDM txt2img config: BERTEmbedder(n_embed=1280, n_layer=32); 8 heads of 64 whatever the width, FF mult 4.
    with torch.device("meta"):
        model = TransformerWrapper(num_tokens=30522, max_seq_len=77, attn_layers=Encoder(dim=1280, depth=32))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == len(compvis_keys(32))
    assert shapes["token_emb.weight"] == (30522, 1280) and shapes["pos_emb.emb.weight"] == (77, 1280)
    assert shapes["attn_layers.layers.62.1.to_q.weight"] == (512, 1280)
    assert shapes["attn_layers.layers.62.1.to_out.weight"] == (1280, 512)
    assert shapes["attn_layers.layers.63.1.net.0.0.weight"] == (5120, 1280)
    assert shapes["attn_layers.layers.63.1.net.2.weight"] == (1280, 5120)
    assert shapes["to_logits.weight"] == (30522, 1280)


def test_attention_equals_softmax_reference_with_mask():
    attn = Attention(dim=24, dim_head=8, heads=3)
    x, ctx = torch.randn(2, 5, 24), torch.randn(2, 7, 24)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False

    def reference(x, ctx, keep):
        q, k, v = (t.view(2, -1, 3, 8).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)))
        logits = q @ k.transpose(-1, -2) * 8 ** -0.5
        logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
        return attn.to_out((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, -1, 24))

    torch.testing.assert_close(attn(x, context=ctx, context_mask=keep), reference(x, ctx, keep))
    # masked keys have no influence
    ctx2 = ctx.clone()
    ctx2[1, 4:] = 100.0
    torch.testing.assert_close(attn(x, ctx2, keep)[1], attn(x, ctx, keep)[1])


def test_forward_embeddings_logits_and_prenorm_residual():
    model = TransformerWrapper(num_tokens=40, max_seq_len=10, attn_layers=Encoder(dim=16, depth=1), emb_dropout=0.0)
    tokens = torch.randint(0, 40, (3, 10))
    z = model(tokens, return_embeddings=True)
    assert z.shape == (3, 10, 16) and model(tokens).shape == (3, 10, 40)
    # manual pre-norm pass: x + attn(ln(x)), then x + ff(ln(x)), final LayerNorm
    x = model.token_emb(tokens) + model.pos_emb.emb.weight[None, :10]
    (n0, attn), (n1, ff) = model.attn_layers.layers
    x = x + attn(n0(x))
    x = x + ff(n1(x))
    torch.testing.assert_close(z, model.norm(x))
    z.sum().backward()
    assert model.to_logits.weight.grad is None and model.token_emb.weight.grad is not None


def test_bad_arguments():
    model = TransformerWrapper(num_tokens=40, max_seq_len=8, attn_layers=Encoder(dim=16, depth=1))
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, length"):
        model(torch.zeros(9, dtype=torch.long))
    with pytest.raises(TypeError, match="rel_pos_bias"):
        Encoder(dim=16, depth=1, rel_pos_bias=True)
    with pytest.raises(TypeError, match="causal"):
        Encoder(dim=16, depth=1, causal=True)
    glu = Encoder(dim=16, depth=1, ff_glu=True, attn_dim_head=4)
    assert "layers.1.1.net.0.proj.weight" in glu.state_dict()
    assert glu.layers[0][1].to_q.weight.shape == (32, 16)
