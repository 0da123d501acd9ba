import torch

from regionedit.attention import temperature_attention


def test_processors_on_attn2_only_and_restored(tiny_model):
    unet = tiny_model.unet
    before = dict(unet.attn_processors)
    with tiny_model.cross_attention(1.25):
        procs = unet.attn_processors
        changed = [n for n in procs if procs[n] is not before[n]]
        assert changed and all(n.endswith("attn2.processor") for n in changed)
        assert set(changed) == set(tiny_model.cross_attention_layers())
    assert all(unet.attn_processors[n] is before[n] for n in before)


def test_temperature_one_matches_default_and_capture_shapes(tiny_model):
    unet = tiny_model.unet
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = tiny_model.encode_prompt(["a red circle", "a blue square"]).embeds
    with torch.no_grad():
        ref = unet(x, 500, encoder_hidden_states=emb).sample
        with temperature_attention(unet, tiny_model.cross_attention_layers(), 1.0) as store:
            same = unet(x, 500, encoder_hidden_states=emb).sample
            store.capture = True
            captured = unet(x, 500, encoder_hidden_states=emb).sample
        with temperature_attention(unet, tiny_model.cross_attention_layers(), 2.0):
            hot = unet(x, 500, encoder_hidden_states=emb).sample
    assert torch.allclose(ref, same, atol=1e-5) and torch.allclose(ref, captured, atol=1e-5)
    assert not torch.allclose(ref, hot, atol=1e-4)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    probs = store.maps[name]
    assert probs.shape[1:] == (256, 48) and torch.allclose(probs.sum(-1), torch.ones(()))
