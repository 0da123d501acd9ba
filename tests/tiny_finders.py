"""Tiny random SAM, SAM-HQ, Grounding DINO and OWLv2 folders built offline, as transformers' own tests
build them: the real code paths run in a few seconds without any download."""

from pathlib import Path

import torch

SAM_VISION = dict(image_size=64, patch_size=8, hidden_size=32, output_channels=32, num_hidden_layers=2,
                  num_attention_heads=2, mlp_dim=64, window_size=4, global_attn_indexes=[1], num_pos_feats=16)  # fmt: skip
SAM_PROMPT = dict(image_size=64, patch_size=8, hidden_size=32, mask_input_channels=4)
SAM_DECODER = dict(
    hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
)
WORDS = ["cat", "dog", "red", "box", "square", "triangle", "a", "the"]
TEXT_LENGTH = 16


def _sam_image_processor():
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    return SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                mask_size={"longest_edge": 32}, mask_pad_size={"height": 32, "width": 32})  # fmt: skip


def sam(folder: Path, hq: bool = False) -> Path:
    import transformers as t

    torch.manual_seed(0)
    prefix = "SamHQ" if hq else "Sam"
    decoder = dict(SAM_DECODER, vit_dim=32) if hq else SAM_DECODER
    config = getattr(t, f"{prefix}Config")(
        vision_config=getattr(t, f"{prefix}VisionConfig")(**SAM_VISION).to_dict(),
        prompt_encoder_config=getattr(t, f"{prefix}PromptEncoderConfig")(**SAM_PROMPT).to_dict(),
        mask_decoder_config=getattr(t, f"{prefix}MaskDecoderConfig")(**decoder).to_dict(),
    )
    getattr(t, f"{prefix}Model")(config).save_pretrained(folder)
    getattr(t, f"{prefix}Processor")(_sam_image_processor()).save_pretrained(folder)
    return folder


def grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,  # fmt: skip
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    torch.manual_seed(0)
    # the model splits phrases at BERT's own ids of [CLS] 101, [SEP] 102, "." 1012 and "?" 1029
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[filler{i}]" for i in range(len(tokens), 1012)] + ["."]
    tokens += [f"[filler{i}]" for i in range(1013, 1029)] + ["?"]
    tokens += WORDS + [",", "!"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizer(vocab=vocab, model_max_length=TEXT_LENGTH),
    )
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   window_size=7, out_indices=[2, 3, 4]),
        text_config=dict(model_type="bert", vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=8, max_position_embeddings=TEXT_LENGTH),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, max_text_len=TEXT_LENGTH,
    )  # fmt: skip
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _byte_characters() -> list[str]:
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in kept]
    return [chr(c) for c in kept] + [chr(256 + i) for i in range(len(extra))]


def owlv2(folder: Path) -> Path:
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    torch.manual_seed(3)  # random weights whose boxes are not all of zero width
    chars = _byte_characters()
    vocab = {c: i for i, c in enumerate(chars)}  # "!" is id 0, OWLv2's padding
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    for word in WORDS:
        current, *rest = list(word[:-1]) + [word[-1] + "</w>"]
        for piece in rest:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)  # BOS > 0: OWLv2 takes input_ids[..., 0] > 0 as its query mask
    vocab["<|endoftext|>"] = len(vocab)  # EOS the largest id: the text pooler takes argmax(input_ids)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=TEXT_LENGTH)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, pad_token_id=0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=64, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=32,
    )  # fmt: skip
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)  # fmt: skip
    return folder
