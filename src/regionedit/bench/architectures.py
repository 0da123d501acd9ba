"""The released models' architectures as configs, for planning memory and building random-weight models.

``regionedit plan --model flux2-klein-4b-random`` reads these (nothing is downloaded or loaded), and
``regionedit bench gpu`` builds the denoisers from them with random weights. Each entry is the
model's component configs (``<component>/config.json`` of its diffusers folder, the keys that differ
from the classes' defaults); its ``source`` says where they were read. Parameter counts follow from
building the networks on the ``meta`` device (:func:`regionedit.plan.shape.build_network`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Spec:
    """A model's architecture: its family and each network component's class and config.

    Attributes:
        family: the registry name (``"sd"``, ``"flux2"``, ...).
        components: component name -> ``(class name, config)``; the denoiser is ``unet`` or
            ``transformer``, text encoders ``text_encoder*`` (transformers classes), the VAE ``vae``.
        text_tokens: text tokens per prompt the denoiser's attention sees.
        guidance: ``"cfg"`` (two batches per prompt) or ``"distilled"`` (one).
        source: where the configs were read.
    """

    family: str
    components: dict = field(default_factory=dict)
    text_tokens: int = 77
    guidance: str = "cfg"
    source: str = ""

    @property
    def denoiser(self) -> tuple[str, dict]:
        return self.components.get("unet") or self.components["transformer"]


# --- text encoders (transformers configs) --------------------------------------------------------
CLIP_L = ("CLIPTextModel", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, projection_dim=768))  # fmt: skip
CLIP_L_PROJ = ("CLIPTextModelWithProjection", CLIP_L[1])
OPENCLIP_H = ("CLIPTextModel", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                    num_attention_heads=16, projection_dim=512, hidden_act="gelu"))  # fmt: skip
OPENCLIP_BIGG = ("CLIPTextModelWithProjection", dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                     num_attention_heads=20, projection_dim=1280, hidden_act="gelu"))  # fmt: skip
T5_XXL = ("T5EncoderModel", dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                                 feed_forward_proj="gated-gelu"))  # fmt: skip
_QWEN3 = dict(
    head_dim=128, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=36, vocab_size=151936
)
QWEN3_4B = dict(_QWEN3, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True)  # Qwen/Qwen3-4B
QWEN3_8B = dict(_QWEN3, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)  # Qwen/Qwen3-8B
QWEN25_VL_7B = ("Qwen2_5_VLForConditionalGeneration", dict(
    text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584),
    tie_word_embeddings=False,
))  # fmt: skip  # Qwen/Qwen2.5-VL-7B-Instruct, the text encoder of Qwen/Qwen-Image

# --- VAEs (diffusers configs) ---------------------------------------------------------------------
SD_VAE = ("AutoencoderKL", dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4))  # fmt: skip
SDXL_VAE = ("AutoencoderKL", dict(SD_VAE[1], force_upcast=True))  # kept in float32 by the family
FLUX_VAE = (
    "AutoencoderKL",
    dict(SD_VAE[1], latent_channels=16, use_quant_conv=False, use_post_quant_conv=False),
)
FLUX2_VAE = (
    "AutoencoderKLFlux2",
    {},
)  # the class's defaults are the released config (32 channels, 2x2 patches)
QWEN_VAE = ("AutoencoderKLQwenImage", {})  # likewise (base 96, z 16, a causal video VAE)

_UNET_SD = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)  # fmt: skip

ARCHITECTURES: dict[str, Spec] = {
    "sd15-random": Spec("sd", {
        "unet": ("UNet2DConditionModel", dict(_UNET_SD, cross_attention_dim=768, attention_head_dim=8)),
        "text_encoder": CLIP_L, "vae": SD_VAE,
    }, source="stable-diffusion-v1-5/stable-diffusion-v1-5 unet/, text_encoder/, vae/ config.json"),
    "sd2-base-random": Spec("sd", {
        "unet": ("UNet2DConditionModel", dict(_UNET_SD, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                              use_linear_projection=True)),
        "text_encoder": OPENCLIP_H, "vae": SD_VAE,
    }, source="stabilityai/stable-diffusion-2-base (as bench/random_models.py)"),
    "sdxl-base-random": Spec("sdxl", {
        "unet": ("UNet2DConditionModel", dict(
            block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)),
        "text_encoder": CLIP_L, "text_encoder_2": OPENCLIP_BIGG, "vae": SDXL_VAE,
    }, source="stabilityai/stable-diffusion-xl-base-1.0 (as bench/random_models.py)"),
    "flux-dev-random": Spec("flux", {
        "transformer": ("FluxTransformer2DModel", dict(in_channels=64, num_layers=19, num_single_layers=38,
                                                       attention_head_dim=128, num_attention_heads=24,
                                                       joint_attention_dim=4096, pooled_projection_dim=768,
                                                       guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
        "text_encoder": CLIP_L, "text_encoder_2": T5_XXL, "vae": FLUX_VAE,
    }, text_tokens=512, guidance="distilled", source="black-forest-labs/FLUX.1-dev transformer/config.json"),
    "sd3-medium-random": Spec("sd3", {
        "transformer": ("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                                      attention_head_dim=64, num_attention_heads=24,
                                                      joint_attention_dim=4096, caption_projection_dim=1536,
                                                      pooled_projection_dim=2048, out_channels=16,
                                                      pos_embed_max_size=192)),
        "text_encoder": CLIP_L_PROJ, "text_encoder_2": OPENCLIP_BIGG, "text_encoder_3": T5_XXL, "vae": FLUX_VAE,
    }, text_tokens=77 + 256, source="stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json"),
    # FLUX.2 [klein]: 24 heads x 128, 5 double- and 20 single-stream blocks (4B); 32 x 128, 8 + 24 (9B); MLP
    # ratio 3; text: Qwen3 layers 9, 18, 27 stacked (joint_attention_dim = 3 x hidden), padded to 512 tokens.
    # Read from the models' transformer/config.json as quoted in public conversion code (BFL's Klein4BParams /
    # Klein9BParams, InvokeAI's presets), 2026-12-07; the base models run CFG, the released 4-step ones not.
    "flux2-klein-4b-random": Spec("flux2", {
        "transformer": ("Flux2Transformer2DModel", dict(in_channels=128, num_layers=5, num_single_layers=20,
                                                        attention_head_dim=128, num_attention_heads=24,
                                                        joint_attention_dim=7680, mlp_ratio=3.0)),
        "text_encoder": ("Qwen3ForCausalLM", QWEN3_4B), "vae": FLUX2_VAE,
    }, text_tokens=512, source="black-forest-labs/FLUX.2-klein-base-4B transformer/config.json; Qwen/Qwen3-4B"),
    "flux2-klein-9b-random": Spec("flux2", {
        "transformer": ("Flux2Transformer2DModel", dict(in_channels=128, num_layers=8, num_single_layers=24,
                                                        attention_head_dim=128, num_attention_heads=32,
                                                        joint_attention_dim=12288, mlp_ratio=3.0)),
        "text_encoder": ("Qwen3ForCausalLM", QWEN3_8B), "vae": FLUX2_VAE,
    }, text_tokens=512, source="black-forest-labs/FLUX.2-klein-base-9B transformer/config.json; Qwen/Qwen3-8B"),
    # Qwen-Image: 60 double-stream blocks of 24 x 128 (20.4 B); the text is the prompt's own tokens (the
    # template's 34 dropped), padded to the batch's longest: 64 assumed here.
    "qwen-image-random": Spec("qwenimage", {
        "transformer": ("QwenImageTransformer2DModel", dict(patch_size=2, in_channels=64, out_channels=16,
                                                            num_layers=60, attention_head_dim=128,
                                                            num_attention_heads=24, joint_attention_dim=3584,
                                                            axes_dims_rope=(16, 56, 56))),
        "text_encoder": QWEN25_VL_7B, "vae": QWEN_VAE,
    }, text_tokens=64, source="Qwen/Qwen-Image transformer/config.json (the class's defaults)"),
    # Z-Image: 30 joint blocks of width 3840 (30 heads) after 2 image-only and 2 text-only refiners; Qwen3-4B's
    # second-to-last hidden states, unpadded (64 tokens assumed, the sequence is padded to multiples of 32).
    "z-image-random": Spec("zimage", {
        "transformer": ("ZImageTransformer2DModel", dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16,
                                                         dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30,
                                                         n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                                                         cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
                                                         axes_dims=(32, 48, 48), axes_lens=(1536, 512, 512))),
        "text_encoder": ("Qwen3Model", QWEN3_4B), "vae": FLUX_VAE,
    }, text_tokens=64, source="Tongyi-MAI/Z-Image-Turbo transformer/config.json; Qwen/Qwen3-4B"),
}  # fmt: skip
