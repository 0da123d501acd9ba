"""CLIP score from a local CLIPModel folder (a tiny random one here), and its skip path."""

import logging

import numpy as np
import pytest
import torch

from regionedit.bench.extras import load_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from regionedit.shapes.model import build_tokenizer

    tok = build_tokenizer(77)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_clip_score_is_cosine_of_normalised_embeddings(clip_dir):
    scorer = load_clip(clip_dir)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a, b = scorer.score(img, "a red circle"), scorer.score(img, "a blue square on a gray background")
    assert -100 <= a <= 100 and a != b
    i, t = scorer.embeddings(img, "a red circle")
    assert a == pytest.approx(100 * float(i @ t / (i.norm() * t.norm())), abs=1e-4)
    # unnormalised dot products (the official script's bug) would scale with the norms
    assert abs(float(i @ t)) != pytest.approx(abs(a) / 100, rel=1e-3)


def test_clip_is_skipped_with_a_reason(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_clip(None) is None
        assert load_clip(tmp_path / "missing") is None
    assert "no local CLIP weights" in caplog.text and "does not exist" in caplog.text
