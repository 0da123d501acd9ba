"""The judge: a small CNN that names the colour and shape of the object inside a mask.

Input is the crop around the mask's box (with a margin), resized to 24x24, as RGB plus the
mask itself. Trained on generator scenes with blur, noise, colour jitter and jittered boxes so
that it also reads the mini model's slightly soft outputs. Used by the demo and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .world import COLOURS, SHAPES, box_mask, random_scene, render

JUDGE_PATH = Path(__file__).resolve().parent.parent / "data" / "judge.safetensors"
CROP = 24
COLOUR_NAMES = list(COLOURS)
SHAPE_NAMES = list(SHAPES)


@dataclass
class Verdict:
    colour: str
    shape: str
    colour_prob: float
    shape_prob: float


class Judge(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(4, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 12
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 6
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(2 * w * 6 * 6, 128)
        self.colour = nn.Linear(128, len(COLOUR_NAMES))
        self.shape = nn.Linear(128, len(SHAPE_NAMES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.head(self.features(x).flatten(1)))
        return self.colour(h), self.shape(h)

    @torch.no_grad()
    def classify(self, image, mask) -> Verdict:
        """Colour and shape of the object inside ``mask`` (bool ``(H, W)``) of ``image``."""
        return self.classify_batch([image], [mask])[0]

    @torch.no_grad()
    def classify_batch(self, images, masks) -> list[Verdict]:
        x = torch.stack(
            [crop_input(np.asarray(i), np.asarray(m, dtype=bool)) for i, m in zip(images, masks, strict=True)]
        )
        pc, ps = (t.softmax(-1) for t in self(x))
        return [
            Verdict(
                COLOUR_NAMES[int(c.argmax())], SHAPE_NAMES[int(s.argmax())], float(c.max()), float(s.max())
            )
            for c, s in zip(pc, ps, strict=True)
        ]


def crop_input(image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """``(4, CROP, CROP)``: RGB in [-1, 1] and the mask, cropped around the mask's box."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("the judge needs a non-empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    margin = max(1, int(round(side * 0.15)))
    cy, cx, half = (y0 + y1) / 2, (x0 + x1) / 2, side / 2 + margin
    box = [cx - half, cy - half, cx + half, cy + half]
    # a float copy: callers may pass read-only arrays (np.asarray of a PIL image)
    img = torch.from_numpy(np.array(image[..., :3], dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    m = torch.from_numpy(mask.astype(np.float32))[None]
    x = torch.cat([img, m])[None]
    h, w = mask.shape
    # an affine grid maps the square box (possibly past the border: zero padding) to CROP x CROP
    theta = torch.tensor(
        [
            [(box[2] - box[0]) / w, 0, (box[0] + box[2]) / w - 1],
            [0, (box[3] - box[1]) / h, (box[1] + box[3]) / h - 1],
        ],
        dtype=torch.float32,
    )
    grid = F.affine_grid(theta[None], (1, 4, CROP, CROP), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def load_judge(path: str | Path | None = None) -> Judge:
    """The shipped judge (or one saved at ``path``), in eval mode on the CPU."""
    path = Path(path) if path else JUDGE_PATH
    judge = Judge()
    judge.load_state_dict(load_file(path))
    return judge.eval()


def _samples(rng: np.random.Generator, n: int, size: int, augment: bool):
    """n (input, colour, shape) triples from random scenes with 1-7 objects."""
    xs, cs, ss = [], [], []
    while len(xs) < n:
        scene = random_scene(rng, int(rng.integers(1, 8)), size=size)
        image, silhouettes = render(scene)
        img = image.astype(np.float32)
        if augment:
            img = _augment(img, rng)
        for obj, sil in zip(scene.objects, silhouettes, strict=True):
            if augment and rng.random() < 0.3:
                mask = sil
            else:
                mask = box_mask(obj, size, margin=int(rng.integers(0, 4)) if augment else 1)
                if augment:
                    mask = np.roll(mask, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), (0, 1))
            xs.append(crop_input(np.clip(img, 0, 255).astype(np.uint8), mask))
            cs.append(COLOUR_NAMES.index(obj.colour))
            ss.append(SHAPE_NAMES.index(obj.shape))
    return torch.stack(xs[:n]), torch.tensor(cs[:n]), torch.tensor(ss[:n])


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.7:  # soft edges like a VAE decoder's
        k = float(rng.uniform(0.3, 1.2))
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        r = 2
        g = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * k * k))
        g = (g / g.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), g, groups=3)
        t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), g.transpose(2, 3), groups=3)
        img = t[0].permute(1, 2, 0).numpy()
    img = img * rng.uniform(0.9, 1.1, size=3) + rng.uniform(-12, 12, size=3)
    return img + rng.normal(0, rng.uniform(0, 10), size=img.shape)


def train_judge(
    out: str | Path = JUDGE_PATH,
    steps: int = 1500,
    batch: int = 128,
    seed: int = 0,
    size: int = 64,
    progress: bool = True,
) -> dict:
    """Train the judge on fresh generator samples; return held-out accuracies."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc="judge", disable=not progress)
    for _ in bar:
        x, c, s = _samples(rng, batch, size, augment=True)
        lc, ls = judge(x)
        loss = F.cross_entropy(lc, c) + F.cross_entropy(ls, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    judge.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, out)
    return evaluate_judge(judge, seed=seed + 10_000, size=size)


@torch.no_grad()
def evaluate_judge(judge: Judge, n: int = 2000, seed: int = 12345, size: int = 64) -> dict:
    """Held-out accuracy on clean generator objects (box masks) and on augmented ones."""
    res = {}
    for name, augment in (("clean", False), ("augmented", True)):
        x, c, s = _samples(np.random.default_rng(seed), n, size, augment)
        lc, ls = judge(x)
        res[name] = {
            "colour": float((lc.argmax(-1) == c).float().mean()),
            "shape": float((ls.argmax(-1) == s).float().mean()),
            "n": n,
        }
    return res
