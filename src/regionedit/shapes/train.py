"""Training recipe of the shapes-world mini model, resumable from safetensors checkpoints.

Phases, each run once and checkpointed every ``ckpt_every`` steps:
1. ``vae``: AutoencoderKL on random 32x32 crops (it is fully convolutional; crops are ~4x
   cheaper per dB than full images, measured), Adam with a cosine decay to 0.
2. ``encode``: posterior means of every scene; the latent scale is 1/std.
3. ``unet``: UNet and text encoder together, v-prediction on a zero-terminal-SNR schedule,
   min-SNR-5 weighting in its v form, 10% empty captions.
4. ``export``: a diffusers ``StableDiffusionPipeline`` folder.

Every random draw comes from a generator seeded by ``(seed, phase, step)``, so a run that
is stopped and resumed gives the same weights as one that is not.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import InvalidOptionError
from ..models.sd import token_ids
from .checkpoint import load_checkpoint, save_checkpoint
from .model import MiniConfig, build_components, save_pipeline
from .world import COLOURS, MAX_OBJECTS, caption_for, random_scene, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    num_scenes: int = 30_000  # 1-3 objects each, as in the measured trials
    max_objects: int = 3
    vae_steps: int = 1200  # 30.7 dB measured at 1,000 steps of this VAE on 2 cores
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 2400  # ~27 min at 0.67 s/step; 1,851 steps gave 100% colour, 76% shape
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_lr_min: float = 1e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    no_background_caption: float = 0.2  # region prompts ("a blue circle") name no background
    partial_caption: float = 0.0  # name a random subset of the objects, no background, as a
    # LoMOE region prompt does in a scene with other objects (third run: 0.25)
    plain_background: float = 0.0  # share of scenes on a uniform random RGB background, captioned
    # without one: the views LoMOE's bootstrapping shows a region branch (fourth run: 0.3)
    min_snr_gamma: float = 5.0
    decoder_steps: int = 400  # decoder-only fine-tune on frozen-encoder means: latents unchanged
    decoder_lr: float = 3e-4
    decoder_composite: float = 0.0  # share of decoder samples that are latent composites: boxes
    # of one scene's latent pasted into another's, the target the same paste in pixels. Teaches a
    # local decoder, so an edit's background decodes as before (GroupNorm and the mid-block
    # attention otherwise carry a new object's colour into it). When > 0 the decoder phase trains
    # on whole scenes, whose statistics are what it sees at use, not crops.
    decoder_batch: int = 16
    init_from: str | None = None  # a pipeline folder ("mini" = the shipped one) to start from
    ckpt_every: int = 200

    def __post_init__(self):
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise InvalidOptionError(f"max_objects must be in 1..{MAX_OBJECTS}, got {self.max_objects}")
        if not 0 <= self.unet_lr_min <= self.unet_lr or not math.isfinite(self.unet_lr):
            raise InvalidOptionError(
                f"need 0 <= unet_lr_min <= unet_lr (finite), got {self.unet_lr_min} and {self.unet_lr}"
            )
        for name in ("vae_batch", "unet_batch", "decoder_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidOptionError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.decoder_composite <= 1:
            raise InvalidOptionError(f"decoder_composite must be in [0, 1], got {self.decoder_composite}")
        if not 0 <= self.plain_background <= 1:
            raise InvalidOptionError(f"plain_background must be in [0, 1], got {self.plain_background}")
        shares = (self.caption_dropout, self.no_background_caption, self.partial_caption)
        if any(not 0 <= v <= 1 for v in shares) or sum(shares) > 1:
            raise InvalidOptionError(
                "caption_dropout, no_background_caption and partial_caption must be in [0, 1] and sum to <= 1"
            )


def make_dataset(cfg: TrainConfig, size: int) -> tuple[torch.Tensor, list[tuple[list, str]]]:
    """Scenes as a uint8 tensor (N, 3, H, W) and their (objects, background) records.

    A ``plain_background`` share of scenes is drawn on a uniform random colour instead, with
    background None (captions then name none); those draws use their own generator, so the
    scenes themselves do not depend on the share.
    """
    rng = np.random.default_rng(cfg.seed)
    plain_rng = np.random.default_rng([cfg.seed, 7])
    images = torch.empty((cfg.num_scenes, 3, size, size), dtype=torch.uint8)
    records = []
    for i in tqdm(range(cfg.num_scenes), desc="scenes", leave=False):
        scene = random_scene(rng, int(rng.integers(1, cfg.max_objects + 1)), size=size)
        rgb = None
        if cfg.plain_background > 0 and plain_rng.random() < cfg.plain_background:
            rgb = _distinct_colour(plain_rng, [COLOURS[o.colour] for o in scene.objects])
        image, _ = render(scene, background_rgb=rgb)
        images[i] = torch.from_numpy(image).permute(2, 0, 1)
        records.append((scene.objects, scene.background if rgb is None else None))
    return images, records


def _distinct_colour(rng: np.random.Generator, avoid: list, min_l1: int = 90) -> tuple[int, int, int]:
    """A uniform random RGB colour at least ``min_l1`` from every colour in ``avoid``."""
    for _ in range(100):
        rgb = rng.integers(0, 256, 3)
        if all(np.abs(rgb - np.array(c)).sum() >= min_l1 for c in avoid):
            break
    return tuple(int(v) for v in rgb)


def _gen(cfg: TrainConfig, phase: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + phase * 100_003 + step)


def _random_crops(images: torch.Tensor, cfg: TrainConfig, model_cfg: MiniConfig, g) -> torch.Tensor:
    """A batch of random scenes, one random ``vae_crop`` window for all, in [-1, 1]."""
    idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=g)
    c, s = cfg.vae_crop, model_cfg.image_size
    ox, oy = (int(v) for v in torch.randint(0, s - c + 1, (2,), generator=g))
    return images[idx, :, oy : oy + c, ox : ox + c].float() / 127.5 - 1


def random_box(h: int, w: int, lo: int, hi: int, g: torch.Generator) -> tuple[slice, slice]:
    """A box of ``lo``..``hi`` cells a side, placed uniformly in an ``h`` x ``w`` grid (draws:
    both sides, height first, then the top row, then the left column)."""
    bh, bw = (int(v) for v in torch.randint(lo, hi + 1, (2,), generator=g))
    y0 = int(torch.randint(0, h - bh + 1, (), generator=g))
    x0 = int(torch.randint(0, w - bw + 1, (), generator=g))
    return slice(y0, y0 + bh), slice(x0, x0 + bw)


def _composite_batch(vae, images: torch.Tensor, cfg: TrainConfig, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole scenes and their encoder means; a ``decoder_composite`` share of them pasted with
    1-3 random boxes of another scene, in the latent and (boxes upsampled) in pixels alike."""
    n = cfg.decoder_batch
    idx = torch.randint(0, len(images), (2, n), generator=g)
    x = images[idx.flatten()].float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
    (xa, xb), (za, zb) = x.chunk(2), z.chunk(2)
    h, w = za.shape[-2:]
    m = torch.zeros(n, 1, h, w)
    paste = torch.rand(n, generator=g) < cfg.decoder_composite
    for i in torch.nonzero(paste).flatten().tolist():
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            ys, xs = random_box(h, w, 2, max(3, h // 2), g)
            m[i, :, ys, xs] = 1
    mp = F.interpolate(m, size=xa.shape[-2:], mode="nearest")
    return mp * xb + (1 - mp) * xa, m * zb + (1 - m) * za


def _caption(record, g: torch.Generator, cfg: TrainConfig) -> str:
    objects, background = record
    u = torch.rand((), generator=g).item()
    if u < cfg.caption_dropout:
        return ""
    if u < cfg.caption_dropout + cfg.no_background_caption:
        return caption_for(objects, None)
    if u < cfg.caption_dropout + cfg.no_background_caption + cfg.partial_caption and len(objects) > 1:
        k = int(torch.randint(1, len(objects), (), generator=g))
        keep = sorted(torch.randperm(len(objects), generator=g)[:k].tolist())
        return caption_for([objects[i] for i in keep], None)
    return caption_for(objects, background)


def _init_from(comps: dict, folder: str) -> None:
    """Copy weights of a saved pipeline (e.g. the shipped mini model) into fresh components.

    Lets a later run go on training from committed weights (a fresh optimiser, with the
    warm-up) when the run's own checkpoints are gone: set ``vae_steps=0`` to keep the VAE.

    A UNet with more plain outer levels than the saved one (``MiniConfig.unet_plain_levels``)
    is grown from it (:func:`~regionedit.models.mini.load_grown_unet`).
    """
    from ..models.loading import MINI_DIR
    from .model import load_grown_unet

    path = MINI_DIR if folder == "mini" else Path(folder)
    for part in ("vae", "unet", "text_encoder"):
        files = sorted((path / part).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no {part} weights (*.safetensors) in {path / part}")
        state = load_file(files[0])
        if part == "unet":
            saved = len(json.loads((path / "unet" / "config.json").read_text())["down_block_types"])
            extra = len(comps["unet"].down_blocks) - saved
            if extra > 0:
                load_grown_unet(comps["unet"], state, extra)
                continue
        comps[part].load_state_dict(state)
    scale = json.loads((path / "vae" / "config.json").read_text()).get("scaling_factor")
    comps["vae"].register_to_config(scaling_factor=scale)


def _cosine(step: int, total: int, lr: float, lr_min: float, warmup: int = 0) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(1.0, p)))


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weight per timestep, in its v-prediction form min(SNR, γ) / (SNR + 1)."""
    snr = alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-12)
    return torch.minimum(snr, torch.tensor(gamma)) / (snr + 1)


def _run_phase(name, steps, step_fn, modules, opt, lr_at, ckpt, cfg, deadline):
    start = load_checkpoint(ckpt, name, modules, opt)
    if start >= steps:
        return True
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        info = step_fn(step)
        bar.set_postfix(info)
        done = step + 1
        if done % cfg.ckpt_every == 0 or done == steps or time.monotonic() > deadline:
            save_checkpoint(ckpt, name, done, modules, opt)
            if time.monotonic() > deadline and done < steps:
                log.warning("time budget reached in phase %s at step %d; rerun to resume", name, done)
                return False
    return True


def train_mini(
    out: str | Path,
    cfg: TrainConfig | None = None,
    model_cfg: MiniConfig | None = None,
    max_minutes: float | None = None,
) -> Path | None:
    """Train (or resume) the mini model in ``out``; return the exported pipeline folder.

    Returns None when ``max_minutes`` ran out first; calling again resumes.
    """
    cfg = cfg or TrainConfig()
    model_cfg = model_cfg or MiniConfig()
    out = Path(out)
    ckpt = out / "ckpt"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"train": asdict(cfg), "model": asdict(model_cfg)}, indent=2))
    deadline = time.monotonic() + (max_minutes * 60 if max_minutes is not None else float("inf"))
    comps = build_components(model_cfg, seed=cfg.seed)
    if cfg.init_from:
        _init_from(comps, cfg.init_from)
    vae, unet, text_encoder, tok = comps["vae"], comps["unet"], comps["text_encoder"], comps["tokenizer"]
    images, records = make_dataset(cfg, model_cfg.image_size)

    # Phase 1: VAE on random crops.
    vae_opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)

    def vae_step(step):
        g = _gen(cfg, 1, step)
        x = _random_crops(images, cfg, model_cfg, g)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 1e-6 * post.kl().mean()
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()
        return {"psnr": f"{10 * math.log10(4 / max(mse.item(), 1e-10)):.1f}"}

    vae.train()
    if not _run_phase(
        "vae",
        cfg.vae_steps,
        vae_step,
        {"vae": vae},
        vae_opt,
        lambda s: _cosine(s, cfg.vae_steps, cfg.vae_lr, 0.0),
        ckpt,
        cfg,
        deadline,
    ):
        return None
    load_checkpoint(ckpt, "vae", {"vae": vae}, None)
    vae.eval().requires_grad_(False)

    # Phase 2: latents (posterior means) of every scene and their scale. A run that goes on
    # from a saved model without UNet steps needs neither (its scale is kept).
    lat_path = out / "latents.safetensors"
    if cfg.init_from and cfg.unet_steps <= 0:
        return _finish(comps, images, cfg, model_cfg, out, deadline)
    if lat_path.exists():
        latents = load_file(lat_path)["latents"]
    else:
        chunks = []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), 256), desc="encode"):
                x = images[i : i + 256].float() / 127.5 - 1
                chunks.append(vae.encode(x).latent_dist.mean)
        latents = torch.cat(chunks)
        save_file({"latents": latents.contiguous()}, lat_path)
    # A fresh model takes 1/std; one that goes on keeps its scale, so its UNet's latents stay valid.
    scale = vae.config.scaling_factor if cfg.init_from else float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale

    # Phase 3: UNet + text encoder.
    sched = comps["scheduler"]
    weight_t = min_snr_weights(sched.alphas_cumprod, cfg.min_snr_gamma)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    unet_opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    unet.train()
    text_encoder.train()

    def unet_step(step):
        g = _gen(cfg, 3, step)
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=g)
        captions = [_caption(records[int(i)], g, cfg) for i in idx]
        ids = token_ids(tok, captions)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        loss = (per * weight_t[t]).mean()
        unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        unet_opt.step()
        return {"loss": f"{per.mean().item():.4f}"}

    if not _run_phase(
        "unet",
        cfg.unet_steps,
        unet_step,
        {"unet": unet, "text_encoder": text_encoder},
        unet_opt,
        lambda s: _cosine(s, cfg.unet_steps, cfg.unet_lr, cfg.unet_lr_min, cfg.warmup_steps),
        ckpt,
        cfg,
        deadline,
    ):
        return None
    return _finish(comps, images, cfg, model_cfg, out, deadline)


def _finish(comps, images, cfg, model_cfg, out: Path, deadline: float) -> Path | None:
    """Phase 4, the decoder alone on the encoder's means (the UNet's latents stay valid), and export."""
    ckpt = out / "ckpt"
    load_checkpoint(ckpt, "unet", {"unet": comps["unet"], "text_encoder": comps["text_encoder"]}, None)
    comps["unet"].eval()
    comps["text_encoder"].eval()
    if not finetune_decoder(comps["vae"], images, cfg, model_cfg, ckpt, deadline):
        return None
    return save_pipeline(comps, out / "pipeline")


def finetune_decoder(
    vae, images, cfg: TrainConfig, model_cfg: MiniConfig, ckpt: Path, deadline: float
) -> bool:
    """Train ``post_quant_conv`` + decoder on posterior means of random crops (encoder frozen)."""
    if cfg.decoder_steps <= 0:
        return True
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.Adam(params, lr=cfg.decoder_lr)
    vae.decoder.train()
    for p in params:
        p.requires_grad_(True)

    def dec_step(step):
        g = _gen(cfg, 4, step)
        if cfg.decoder_composite > 0:
            x, z = _composite_batch(vae, images, cfg, g)
        else:
            x = _random_crops(images, cfg, model_cfg, g)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mean
        mse = F.mse_loss(vae.decode(z).sample, x)
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        return {"psnr": f"{10 * math.log10(4 / max(mse.item(), 1e-10)):.1f}"}

    done = _run_phase(
        "decoder",
        cfg.decoder_steps,
        dec_step,
        {"vae": vae},
        opt,
        lambda s: _cosine(s, cfg.decoder_steps, cfg.decoder_lr, 0.0),
        ckpt,
        cfg,
        deadline,
    )
    load_checkpoint(ckpt, "decoder", {"vae": vae}, None)
    vae.eval().requires_grad_(False)
    return done


def export_checkpoint(out: str | Path, folder: str | Path) -> Path:
    """Write the latest checkpoints of a (possibly unfinished) run as a pipeline, to judge it."""
    out = Path(out)
    meta = json.loads((out / "config.json").read_text())
    cfg, model_cfg = (
        TrainConfig(**meta["train"]),
        MiniConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}),
    )
    comps = build_components(model_cfg, seed=cfg.seed)
    if cfg.init_from:  # its VAE (when vae_steps is 0) and latent scale, as train_mini keeps them
        _init_from(comps, cfg.init_from)
    load_checkpoint(out / "ckpt", "vae", {"vae": comps["vae"]})
    load_checkpoint(out / "ckpt", "decoder", {"vae": comps["vae"]})  # no-op before phase 4
    load_checkpoint(out / "ckpt", "unet", {"unet": comps["unet"], "text_encoder": comps["text_encoder"]})
    if not cfg.init_from:
        latents = load_file(out / "latents.safetensors")["latents"]
        comps["vae"].register_to_config(scaling_factor=float(1.0 / latents.std()))
    return save_pipeline(comps, folder)
