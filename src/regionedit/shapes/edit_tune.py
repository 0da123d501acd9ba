"""Edit-aimed fine-tune of a mini model's denoiser: the last stage of its recipe.

A LoMOE region branch starts from the inversion of the source inside its mask and a noised
random colour outside it (the bootstrap). The pretrained denoiser holds the inverted old object
there (a square asked to become a triangle often stays a square). This stage shows it such
views of edit pairs (a scene, one object given new attributes) at the first ``max_step`` edit
steps, with the region prompt, and regresses its predicted clean latent on the *target*
object's latent in the box; ordinary samples of the same scenes, with the model's own training
loss (v-prediction for the UNet mini model, velocity for the flow one), keep it a denoiser.
Alone the tuned UNet draws shapes well and colours pale (docs/experiments.md); the shipped
denoiser is the weight-space mix ``(1 - mix)·base + mix·tuned``.

Every random draw comes from a generator seeded by ``(seed, step)``, so a resumed run gives
the same weights as one that is not stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import InvalidOptionError
from .edit_tune_config import EditTuneConfig
from .train import _run_phase, min_snr_weights
from .train_flow import shift_sigmas, velocity_error
from .world import Scene, ShapeObject, box_mask, caption_for, new_attributes, random_scene, render


def make_pairs(cfg: EditTuneConfig, size: int):
    """Source and target images, the edited object's box, and captions of each pair."""
    sources, targets, boxes, meta = [], [], [], []
    for i in range(cfg.pairs):
        rng = np.random.default_rng([cfg.seed, i])
        scene = random_scene(rng, int(rng.integers(1, cfg.max_objects + 1)), size=size)
        k = int(rng.integers(0, len(scene.objects)))
        obj = scene.objects[k]
        colour, shape = new_attributes(rng, obj)  # ShapesBench's rule
        objects = list(scene.objects)
        objects[k] = ShapeObject(shape=shape, colour=colour, bbox=obj.bbox)
        target = Scene(size=scene.size, background=scene.background, objects=objects)
        sources.append(render(scene)[0])
        targets.append(render(target)[0])
        boxes.append(box_mask(obj, size, margin=1))
        meta.append(
            {
                "src": scene.caption,
                "tgt": caption_for(objects, scene.background),
                "src_plain": caption_for(list(scene.objects), None),
                "tgt_plain": caption_for(objects, None),
                "region": f"a {colour} {shape}",
            }
        )
    return sources, targets, boxes, meta


@torch.no_grad()
def build_data(model, cfg: EditTuneConfig, size: int) -> tuple[dict, list]:
    """Latents of the pairs and the source inversions at the first ``max_step`` edit steps."""
    from ..inversion import InversionOptions, invert_batch

    sources, targets, boxes, meta = make_pairs(cfg, size)
    f = model.vae_scale_factor
    box = torch.from_numpy(np.stack(boxes)).float()[:, None]
    box = torch.nn.functional.interpolate(box, size=(size // f, size // f), mode="nearest")

    def encode(images):
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.cat([model.encode(x[i : i + 64]) for i in tqdm(range(0, len(x), 64), desc="encode")])

    z_src, z_tgt = encode(sources), encode(targets)
    opts = InversionOptions(num_inference_steps=cfg.num_steps)
    kept = []
    for s in tqdm(range(0, cfg.pairs, 50), desc="invert"):
        prompts = [m["src"] for m in meta[s : s + 50]]
        traj = invert_batch(
            model, z_src[s : s + 50], prompts, opts, lambda step: torch.Generator().manual_seed(0), False
        )
        kept.append(torch.stack([traj[cfg.num_steps - i] for i in range(cfg.max_step)], 1))
    inv = torch.cat(kept)
    data = {"z_src": z_src, "z_tgt": z_tgt, "box": box, "inv": inv, "z_T": inv[:, 0]}
    return {k: v.contiguous() for k, v in data.items()}, meta


def _colour_pool(model, cfg: EditTuneConfig, size: int) -> torch.Tensor:
    """Latents of 100 uniform random colours, the bootstrap's backgrounds."""
    colours = torch.rand((100, 3, 1, 1), generator=torch.Generator().manual_seed(cfg.seed)) * 2 - 1
    with torch.no_grad():
        return torch.cat(
            [model.encode(colours[i : i + 10].expand(-1, -1, size, size)) for i in range(0, 100, 10)]
        )


def mix_weights(base: dict, tuned: dict, mix: float) -> dict:
    """``(1 - mix)·base + mix·tuned`` per tensor, in the base's dtypes."""
    if base.keys() != tuned.keys():
        raise InvalidOptionError("the two denoisers do not have the same parameters")
    return {
        k: ((1 - mix) * base[k].float() + mix * tuned[k].float()).to(base[k].dtype).contiguous() for k in base
    }


def denoiser_folder(pipeline: Path) -> str:
    """The folder of a pipeline's denoiser, also its checkpoint prefix: ``unet`` or ``transformer``."""
    return "unet" if (pipeline / "unet").is_dir() else "transformer"


def _v_loss(model, sched, cfg: EditTuneConfig):
    """The UNet mini model's denoising loss: v-prediction at a uniform training timestep, min-SNR
    weighted (its recipe's)."""
    train = sched.scheduler  # diffusers' DDIM holds the training-side formulas too
    weight_t = min_snr_weights(train.alphas_cumprod, cfg.min_snr_gamma)

    def loss(x0, cond, g):
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        pred = model.predict(train.add_noise(x0, noise, t), t, cond)
        per = ((pred - train.get_velocity(x0, noise, t)) ** 2).mean(dim=(1, 2, 3))
        return per, (per * weight_t[t]).mean()

    return loss


def _flow_loss(model, sched):
    """The flow mini model's: velocity error at a logit-normal σ shifted as the model's sampler
    shifts its sigmas (its recipe's ``train_shift``)."""
    shift = float(sched.scheduler.config.get("shift", 1.0))

    def loss(x0, cond, g):
        noise = torch.randn(x0.shape, generator=g)
        sigma = shift_sigmas(torch.sigmoid(torch.randn(x0.shape[0], generator=g)), shift)
        err = velocity_error(lambda x, sig: model.predict(x, sig * 1000, cond), x0, noise, sigma)
        per = err.mean(dim=(1, 2, 3))
        return per, per.mean()

    return loss


def edit_tune(
    out: str | Path,
    base: str | Path = "mini",
    cfg: EditTuneConfig | None = None,
    max_minutes: float | None = None,
) -> Path | None:
    """Fine-tune ``base``'s denoiser in ``out`` (resumable); return ``out/pipeline`` with the mixed one.

    ``base``: a pipeline folder, or ``"mini"`` / ``"mini-flow"`` for the shipped models.

    Returns None when ``max_minutes`` ran out first; calling again resumes.
    """
    from ..models.loading import MINI_DIR, MINI_FLOW_DIR, load

    cfg = cfg or EditTuneConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = {"mini": MINI_DIR, "mini-flow": MINI_FLOW_DIR}.get(str(base), Path(base))
    (out / "config.json").write_text(json.dumps({"edit_tune": asdict(cfg), "base": str(base_dir)}, indent=2))
    deadline = time.monotonic() + (max_minutes * 60 if max_minutes is not None else float("inf"))
    model = load(str(base_dir))
    size = model.native_size
    data_path = out / "data.safetensors"
    if data_path.exists():
        data, meta = load_file(data_path), json.loads((out / "meta.json").read_text())
    else:
        data, meta = build_data(model, cfg, size)
        save_file(data, data_path)
        (out / "meta.json").write_text(json.dumps(meta))
    pool = _colour_pool(model, cfg, size)

    denoiser, name = model.denoiser, denoiser_folder(base_dir)
    sched = model.scheduler(cfg.num_steps)  # the edit's timesteps, noising and clean-latent formulas
    plain_loss = _flow_loss(model, sched) if model.prediction_type == "flow" else _v_loss(model, sched, cfg)
    denoiser.train()
    denoiser.requires_grad_(True)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr, weight_decay=0.01)
    n = len(meta)

    def step_fn(step: int) -> dict:
        g = torch.Generator().manual_seed(cfg.seed * 100003 + step)
        # ordinary samples: source or target scenes with their captions
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        use_tgt = torch.rand(cfg.batch, generator=g) < 0.5
        x0 = torch.where(use_tgt[:, None, None, None], data["z_tgt"][idx], data["z_src"][idx])
        captions = []
        for j, i in enumerate(idx.tolist()):
            u = torch.rand((), generator=g).item()
            key = "tgt" if use_tgt[j] else "src"
            plain = cfg.caption_dropout + cfg.no_background_caption
            captions.append(
                "" if u < cfg.caption_dropout else meta[i][key + "_plain"] if u < plain else meta[i][key]
            )
        per, loss_plain = plain_loss(x0, model.encode_prompt(captions), g)
        # edit samples: a region branch's bootstrapped view at an early step, the region prompt
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        si = torch.randint(0, cfg.max_step, (cfg.batch,), generator=g)
        te = sched.timesteps[si]
        background = sched.add_noise(
            pool[torch.randint(0, 100, (cfg.batch,), generator=g)], data["z_T"][idx], te
        )
        box = data["box"][idx]
        view = box * data["inv"][idx, si] + (1 - box) * background
        prompts = [meta[i]["region"] for i in idx.tolist()]
        x0_pred = sched.to_x0(model.predict(view, te, model.encode_prompt(prompts)), view, te)
        err = ((x0_pred - data["z_tgt"][idx]) ** 2 * box).sum(dim=(1, 2, 3)) / (box.sum(dim=(1, 2, 3)) * 4)
        loss_edit = err.mean()
        opt.zero_grad(set_to_none=True)
        (loss_plain + cfg.edit_weight * loss_edit).backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        opt.step()
        return {"plain": f"{per.mean().item():.4f}", "edit": f"{loss_edit.item():.4f}"}

    lr_at = lambda step: cfg.lr * min(1.0, (step + 1) / cfg.warmup)  # noqa: E731
    if not _run_phase(
        "edit_tune", cfg.steps, step_fn, {name: denoiser}, opt, lr_at, out / "ckpt", cfg, deadline
    ):
        return None
    return export(out, base_dir, cfg.mix)


def export(out: str | Path, base: str | Path, mix: float) -> Path:
    """``out/pipeline``: ``base`` with its denoiser mixed towards the run's tuned one by ``mix``."""
    out, base = Path(out), Path(base)
    name = denoiser_folder(base)
    tuned = {
        k[len(name) + 1 :]: v
        for k, v in load_file(out / "ckpt" / "edit_tune.safetensors").items()
        if k.startswith(name + ".")
    }
    pipe = out / "pipeline"
    if pipe.exists():
        shutil.rmtree(pipe)
    shutil.copytree(base, pipe)
    weights = f"{name}/diffusion_pytorch_model.safetensors"
    save_file(mix_weights(load_file(base / weights), tuned, mix), pipe / weights)
    return pipe
