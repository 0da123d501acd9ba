"""Training recipe of the mini model's ControlNets (edge, scribble) on shapes-world scenes.

The base model is frozen; the ControlNet starts as a copy of the UNet encoder (diffusers'
``ControlNetModel.from_unet``) with zero-initialised output convolutions, and learns the
model's own target (ε or v) with the control map as extra input. Captions are dropped 50 % of
the time (the ControlNet paper's rule), so the net learns to read the map, not the words.

Resumable: ``controlnet.safetensors`` (net + AdamW state) and ``controlnet.json`` (step) are written every
``ckpt_every`` steps; every random draw comes from a generator seeded by ``(seed, step)``, so a
stopped and resumed run gives the same weights. The result is a diffusers folder
``OUT/<kind>`` (safetensors), to be copied into ``regionedit/data/controlnet-mini/<kind>``.

    python -m regionedit.shapes.train_controlnet --kind edge --out runs/controlnet-edge
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..models.interface import Model
from ..models.loading import DATA_DIR, load
from ..multimodal.conditions import canny_edges, scribble_from_image
from .checkpoint import load_checkpoint, save_checkpoint
from .world import random_scene, render

log = logging.getLogger(__name__)
MAPS = {"edge": canny_edges, "scribble": scribble_from_image}


@dataclass(frozen=True)
class ControlTrainConfig:
    kind: str = "edge"
    seed: int = 0
    num_scenes: int = 20_000  # 1-3 objects, the mini model's training distribution
    max_objects: int = 3
    steps: int = 3000
    batch: int = 32
    lr: float = 2e-4
    lr_min: float = 2e-5
    warmup_steps: int = 100
    caption_dropout: float = 0.5  # ControlNet paper: half the prompts empty
    embedding_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels: 4x down, like the mini VAE
    ckpt_every: int = 200
    init_from: str | None = None  # a ControlNet folder, or "shipped" for data/controlnet-mini/<kind>


def build_dataset(model: Model, cfg: ControlTrainConfig, size: int):
    """Scenes -> (latents (N, 4, h, w) float32, control maps (N, 3, H, W) uint8, captions)."""
    rng = np.random.default_rng(cfg.seed)
    maps, latents, captions = [], [], []
    batch_images = []
    for _ in tqdm(range(cfg.num_scenes), desc="scenes", leave=False):
        scene = random_scene(rng, int(rng.integers(1, cfg.max_objects + 1)), size=size)
        image, _ = render(scene)
        pil = Image.fromarray(image)
        maps.append(torch.from_numpy(np.asarray(MAPS[cfg.kind](pil))).permute(2, 0, 1))
        captions.append(scene.caption)
        batch_images.append(model.image_to_tensor(pil))
        if len(batch_images) == 64:
            latents.append(model.encode(torch.cat(batch_images)).cpu())
            batch_images = []
    if batch_images:
        latents.append(model.encode(torch.cat(batch_images)).cpu())
    return torch.cat(latents), torch.stack(maps), captions


def _lr(step: int, cfg: ControlTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * p))


def _init_path(cfg: ControlTrainConfig) -> Path:

    path = DATA_DIR / "controlnet-mini" / cfg.kind if cfg.init_from == "shipped" else Path(cfg.init_from)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no ControlNet folder (config.json) at {path}")
    return path


def _from_unet(unet, embedding_channels, seed: int):
    """``ControlNetModel.from_unet``; it draws from the global RNG, so seed it, isolated."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding_channels)


def grow_controlnet(old, unet):
    """A ControlNet for ``unet``, a UNet grown by outer levels from the one ``old`` was trained for.

    The new net starts as ``from_unet(unet)`` (its input conv, time embedding and new outer
    levels); the old net's control embedding, levels, mid block and output convs move in, the
    levels and output convs renumbered past the new ones. The new levels' output convs stay at
    zero, so the net adds nothing at the finer grid until it is trained there.
    """
    levels = len(unet.down_blocks) - len(old.down_blocks)
    if levels < 1:
        raise ValueError(f"the UNet has {len(unet.down_blocks)} levels, not more than the ControlNet's")
    net = _from_unet(unet, old.config.conditioning_embedding_out_channels, seed=0)
    shift = len(net.controlnet_down_blocks) - len(old.controlnet_down_blocks)
    renamed = {}
    for key, value in old.state_dict().items():
        head, _, rest = key.partition(".")
        if head in ("conv_in", "time_embedding"):
            continue  # these belong to the grown UNet's finest level now
        if head in ("down_blocks", "controlnet_down_blocks"):
            i, _, rest = rest.partition(".")
            key = f"{head}.{int(i) + (levels if head == 'down_blocks' else shift)}.{rest}"
        renamed[key] = value
    target = net.state_dict()
    bad = [k for k, v in renamed.items() if k not in target or target[k].shape != v.shape]
    if bad:
        raise ValueError(f"the ControlNet does not fit a UNet grown by {levels} level(s): {bad[:3]}")
    net.load_state_dict(renamed, strict=False)
    return net


def train_controlnet(
    model: Model, out: str | Path, cfg: ControlTrainConfig, max_minutes: float | None = None
):
    """Train (or resume) one ControlNet; returns the exported folder, or None if stopped early."""
    from diffusers import ControlNetModel

    if cfg.kind not in MAPS:
        raise ValueError(f"kind must be one of {sorted(MAPS)}, got {cfg.kind!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (max_minutes * 60 if max_minutes is not None else float("inf"))
    size = model.vae.config.sample_size
    if cfg.init_from is not None:  # go on from committed weights (a fresh optimiser and warm-up)
        net = ControlNetModel.from_pretrained(str(_init_path(cfg)))
        if len(net.down_blocks) < len(model.denoiser.down_blocks):  # the base UNet was grown
            net = grow_controlnet(net, model.denoiser)
    else:
        net = _from_unet(model.denoiser, cfg.embedding_channels, cfg.seed)
    net = net.to(model.device, torch.float32).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-2)
    start = load_checkpoint(out, "controlnet", {"net": net}, opt)
    data_path = out / "dataset.safetensors"
    if start >= cfg.steps:  # nothing left to train (e.g. --steps 0 exports a grown net as it is)
        latents = maps = captions = None
    elif data_path.exists():  # deterministic from the seed; cached so a resume skips it
        d = load_file(data_path)
        latents, maps = d["latents"], d["maps"]
        captions = json.loads((out / "captions.json").read_text())
    else:
        latents, maps, captions = build_dataset(model, cfg, size)
        save_file({"latents": latents.contiguous(), "maps": maps.contiguous()}, data_path)
        (out / "captions.json").write_text(json.dumps(captions))
    sched = model.scheduler(
        1
    ).scheduler  # diffusers' DDIM: add_noise and get_velocity of the training schedule
    pred_type = sched.config.prediction_type
    bar = tqdm(range(start, cfg.steps), desc=f"controlnet-{cfg.kind}", initial=start, total=cfg.steps)
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=g)
        z0 = latents[idx].to(model.device)
        noise = torch.randn(z0.shape, generator=g).to(model.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=g).to(model.device)
        drop = torch.rand(cfg.batch, generator=g) < cfg.caption_dropout
        prompt = model.encode_prompt(
            ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
        )
        cond = maps[idx].float().div(255).to(model.device)
        zt = sched.add_noise(z0, noise, t)
        target = noise if pred_type == "epsilon" else sched.get_velocity(z0, noise, t)
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        inputs = model.denoiser_inputs(zt, prompt)
        down, mid = net(zt, t, controlnet_cond=cond, return_dict=False, **inputs)
        pred = model.predict(
            zt, t, prompt, down_block_additional_residuals=[d.to(model.dtype) for d in down],
            mid_block_additional_residual=mid.to(model.dtype),
        )  # fmt: skip
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if done % cfg.ckpt_every == 0 or done == cfg.steps or time.monotonic() > deadline:
            save_checkpoint(out, "controlnet", done, {"net": net}, opt, {"config": asdict(cfg)})
            if time.monotonic() > deadline and done < cfg.steps:
                log.warning("time budget reached at step %d; run the same command again to resume", done)
                return None
    folder = out / cfg.kind
    net.eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train (or resume) a mini-model ControlNet on shapes-world maps.")
    p.add_argument("--kind", choices=sorted(MAPS), default="edge")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="mini")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--num-scenes", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument(
        "--init-from", default=None, help='ControlNet folder to start from; "shipped" = the packaged one'
    )
    args = p.parse_args(argv)
    keys = ("steps", "batch", "num_scenes", "init_from")
    over = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = ControlTrainConfig(kind=args.kind, seed=args.seed, **over)
    folder = train_controlnet(load(args.model, device=args.device), args.out, cfg, args.max_minutes)
    print(folder if folder else f"stopped early; run the same command again to resume from {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
