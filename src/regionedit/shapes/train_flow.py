"""Training recipe of the shapes-world mini flow model (``regionedit.load("mini-flow")``).

A FLUX-architecture transformer (``FluxTransformer2DModel``: double- and single-stream blocks,
packed 2x2 latents, rotary positions) trained by rectified flow on the same 128x128 world as the
UNet mini model, on that model's VAE and tokenizer, so ``eval-mini`` judges both alike:

- ``text_encoder`` (CLIP, pooled input) is the mini model's, frozen;
- ``text_encoder_2`` (the sequence the joint attention reads; a T5 in FLUX.1) starts as a copy
  of the same CLIP and trains with the transformer: it already tells the world's words apart;
- loss ``‖v̂(x_σ, σ) − (noise − x0)‖²`` with ``x_σ = (1 − σ)·x0 + σ·noise``, σ logit-normal
  (Esser et al. 2024), optionally shifted towards noise by ``train_shift`` as the sampler's sigmas
  are, 10% empty captions for classifier-free guidance (no guidance embedding).

Resumable: checkpoints every ``ckpt_every`` steps in ``OUT/ckpt`` (safetensors); every random draw
comes from a generator seeded by ``(seed, phase, step)``. ``OUT/pipeline`` is a ``FluxPipeline``
folder with edit settings.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import InvalidOptionError
from ..models.flow import flux_inputs, unpack
from ..models.sd import token_ids
from .checkpoint import load_checkpoint
from .train import TrainConfig, _caption, _cosine, _gen, _run_phase, make_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowConfig:
    seed: int = 0
    num_scenes: int = 6_000  # encoding 128-px scenes with the mini VAE costs ~0.1 s each on 2 cores
    max_objects: int = 7
    partial_caption: float = 0.25  # region prompts name some of the objects (as the UNet model's recipe)
    plain_background: float = 0.2  # bootstrapped views: objects on a uniform colour
    steps: int = 12000  # a multi-session run: the cosine spans all of it
    batch: int = 32  # 1.8 s per step on 2 cores (64: 3.9 s)
    lr: float = 5e-4
    lr_min: float = 5e-5
    warmup_steps: int = 100
    ckpt_every: int = 100
    width: int = 128  # heads × head_dim
    head_dim: int = 32
    double_layers: int = 4
    single_layers: int = 4
    sample_shift: float = 2.0  # the scheduler's static shift of the sampling sigmas
    train_shift: float = 1.0  # the same shift on the training sigmas (1: plain logit-normal)

    def __post_init__(self):
        if self.width % self.head_dim or self.head_dim % 16:
            raise InvalidOptionError("width must be a multiple of head_dim, and head_dim of 16")
        if self.steps < 0 or self.batch < 1:
            raise InvalidOptionError("steps must be >= 0 and batch >= 1")
        if self.train_shift <= 0 or self.sample_shift <= 0:
            raise InvalidOptionError("train_shift and sample_shift must be > 0")


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX's rotary split of a head over its position ids (index, row, column): a quarter, then
    half the rest each (FLUX.1: 16, 56, 56 of 128)."""
    return (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)


def saved_flow_config(out: str | Path) -> FlowConfig | None:
    """The recipe a run in ``out`` was last started with (``OUT/config.json``), or None."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        return FlowConfig(**json.loads(path.read_text())["flow"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidOptionError(
            f"{path} is not a flow training config ({exc}); give another --out"
        ) from None


def build_flow_components(cfg: FlowConfig, base: str | Path = "mini") -> dict:
    """A random FLUX transformer on the UNet mini model's VAE, CLIP and tokenizer (``base``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..models.loading import MINI_DIR

    path = MINI_DIR if str(base) == "mini" else Path(base)
    vae = AutoencoderKL.from_pretrained(path / "vae")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=cfg.double_layers,
            num_single_layers=cfg.single_layers, attention_head_dim=cfg.head_dim,
            num_attention_heads=cfg.width // cfg.head_dim, joint_attention_dim=text_encoder.config.hidden_size,
            pooled_projection_dim=text_encoder.config.hidden_size, guidance_embeds=False,
            axes_dims_rope=_rope_axes(cfg.head_dim),
        )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.sample_shift)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=copy.deepcopy(text_encoder),
                tokenizer_2=tokenizer, transformer=transformer, scheduler=scheduler)  # fmt: skip


def _latents(comps: dict, cfg: FlowConfig, out: Path, size: int):
    """Scaled posterior means of every scene (cached in ``OUT/latents.safetensors``) and the records."""
    data_cfg = TrainConfig(seed=cfg.seed, num_scenes=cfg.num_scenes, max_objects=cfg.max_objects,
                           plain_background=cfg.plain_background)  # fmt: skip
    images, records = make_dataset(data_cfg, size)
    path = out / "latents.safetensors"
    scenes = json.dumps(asdict(data_cfg), sort_keys=True)  # the cache holds these scenes only
    if path.exists() and _metadata(path).get("scenes") == scenes:
        latents = load_file(path)["latents"]
    else:
        vae, chunks = comps["vae"], []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), 128), desc="encode", leave=False):
                chunks.append(vae.encode(images[i : i + 128].float() / 127.5 - 1).latent_dist.mean)
        latents = torch.cat(chunks)
        save_file({"latents": latents.contiguous()}, path, metadata={"scenes": scenes})
    return latents * comps["vae"].config.scaling_factor, records, data_cfg


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The static time shift ``sσ / (1 + (s − 1)σ)`` (SD3, FLUX): more mass near σ = 1 for s > 1."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_prediction(transformer, latents, sigma, embeds, pooled) -> torch.Tensor:
    """The transformer's velocity for unpacked latents ``(B, C, h, w)`` at σ ``(B,)`` (float)."""
    out = transformer(**flux_inputs(latents, sigma, embeds, pooled), return_dict=False)[0]
    return unpack(out, latents.shape[-2:])


def velocity_error(predict, x0, noise, sigma) -> torch.Tensor:
    """Squared error, per element, of ``predict(x_σ, σ)``, a velocity, at ``x_σ = (1 − σ)·x0 + σ·noise``
    (σ of shape ``(B,)``, in [0, 1]): the rectified-flow loss of training and of the edit tune."""
    s = sigma.view(-1, 1, 1, 1)
    return (predict((1 - s) * x0 + s * noise, sigma) - (noise - x0)) ** 2


def train_flow(
    out: str | Path, cfg: FlowConfig | None = None, max_minutes: float | None = None
) -> Path | None:
    """Train (or resume) the mini flow model in ``out``; return its pipeline folder, or None when
    ``max_minutes`` ran out first (calling again resumes)."""
    cfg = cfg or FlowConfig()
    out = Path(out)
    ckpt = out / "ckpt"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"flow": asdict(cfg)}, indent=2))
    deadline = time.monotonic() + (max_minutes * 60 if max_minutes is not None else float("inf"))
    comps = build_flow_components(cfg)
    size = comps["vae"].config.sample_size
    latents, records, data_cfg = _latents(comps, cfg, out, size)
    transformer, text_2, text_1, tok = (
        comps[k] for k in ("transformer", "text_encoder_2", "text_encoder", "tokenizer")
    )
    text_1.requires_grad_(False).eval()
    params = list(transformer.parameters()) + list(text_2.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    transformer.train()
    text_2.train()

    def step_fn(step):
        g = _gen(data_cfg, 5, step)
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=g)
        ids = token_ids(tok, [_caption(records[int(i)], g, data_cfg) for i in idx])
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        sigma = shift_sigmas(torch.sigmoid(torch.randn(cfg.batch, generator=g)), cfg.train_shift)
        with torch.no_grad():
            pooled = text_1(ids).pooler_output
        embeds = text_2(ids)[0]
        loss = velocity_error(
            lambda x, sig: flow_prediction(transformer, x, sig, embeds, pooled), x0, noise, sigma
        ).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"loss": f"{loss.item():.4f}"}

    modules = {"transformer": transformer, "text_encoder_2": text_2}
    lr_at = lambda s: _cosine(s, cfg.steps, cfg.lr, cfg.lr_min, cfg.warmup_steps)  # noqa: E731
    if not _run_phase("flow", cfg.steps, step_fn, modules, opt, lr_at, ckpt, cfg, deadline):
        return None
    return export_flow(out, out / "pipeline")


def trained_components(out: str | Path) -> tuple[FlowConfig, dict, int]:
    """The recipe, the components with the latest checkpoint's weights, and its step, of a run."""
    out = Path(out)
    cfg = saved_flow_config(out)
    if cfg is None:
        raise InvalidOptionError(f"no flow training run in {out} (config.json)")
    comps = build_flow_components(cfg)
    step = load_checkpoint(out / "ckpt", "flow", {"transformer": comps["transformer"],
                                                  "text_encoder_2": comps["text_encoder_2"]})  # fmt: skip
    return cfg, comps, step


def export_flow(out: str | Path, folder: str | Path) -> Path:
    """Write the latest checkpoint of a (possibly unfinished) run as a ``FluxPipeline`` folder."""
    from diffusers import FluxPipeline

    cfg, comps, step = trained_components(out)
    folder = Path(folder)
    FluxPipeline(**comps).save_pretrained(str(folder), safe_serialization=True)
    settings = Path(__file__).resolve().parent.parent / "data" / "mini_flow_settings.json"
    if settings.is_file():
        (folder / "regionedit_settings.json").write_text(settings.read_text())
    (folder / "training_config.json").write_text(
        json.dumps({"flow": asdict(cfg), "steps_done": step}, indent=2)
    )
    log.info("exported step %d to %s", step, folder)
    return folder
