"""Optional metrics that need weights from elsewhere: CLIP score and background LPIPS.

Neither can be downloaded here; both load from a local path and are skipped, with a
message saying why, when it is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# CLIP's image normalisation (the same for every OpenAI and OpenCLIP ViT checkpoint)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """``100 · cos(image, text)`` from a local transformers ``CLIPModel`` folder.

    Both embeddings are L2-normalised before the dot product (the official LoMOE script
    skips this, which makes its score scale with embedding norms).
    """

    def __init__(self, path: str | Path, device="cpu"):
        from transformers import CLIPModel, CLIPTokenizer

        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        self.device = torch.device(device)
        self.size = int(self.model.config.vision_config.image_size)

    def _pixels(self, image) -> torch.Tensor:
        im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
        im = im.resize((self.size, self.size), Image.BICUBIC)  # shapes images are square
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
        return ((x - mean) / std)[None].to(self.device)

    @torch.no_grad()
    def embeddings(self, image, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(
            [text], padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.device)  # fmt: skip
        img = self.model.get_image_features(pixel_values=self._pixels(image))
        txt = self.model.get_text_features(input_ids=ids)
        img = getattr(img, "pooler_output", img)  # newer transformers return an output object
        txt = getattr(txt, "pooler_output", txt)
        return img[0].float(), txt[0].float()

    def score(self, image, text: str) -> float:
        img, txt = self.embeddings(image, text)
        return float(100 * torch.nn.functional.cosine_similarity(img, txt, dim=0))


def load_clip(path: str | Path | None, device="cpu") -> ClipScorer | None:
    """A :class:`ClipScorer`, or None with a logged reason when ``path`` is absent or unusable."""
    if not path:
        log.warning("CLIP score skipped: no local CLIP weights given (--clip PATH to a CLIPModel folder)")
        return None
    if not Path(path).exists():
        log.warning("CLIP score skipped: %s does not exist", path)
        return None
    try:
        return ClipScorer(path, device)
    except (OSError, ValueError) as exc:
        log.warning("CLIP score skipped: cannot load %s: %s", path, exc)
        return None


def background_lpips(a, b, background, net: str = "alex") -> float | None:
    """LPIPS averaged over background pixels of its spatial map; None when ``lpips`` (which
    needs torchvision and its pretrained backbone) is unavailable."""
    try:
        import lpips
    except ImportError:
        log.warning("LPIPS skipped: the lpips package (needs torchvision) is not installed")
        return None
    fn = lpips.LPIPS(net=net, spatial=True, verbose=False)

    def t(x):
        return torch.from_numpy(np.asarray(x, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

    with torch.no_grad():
        d = fn(t(a), t(b))[0, 0].numpy()
    bg = np.asarray(background, dtype=bool)
    return float(d[bg].mean()) if bg.any() else None
