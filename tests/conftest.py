"""Tiny random models built in code: fast, offline, deterministic."""

import numpy as np
import pytest
from PIL import Image

from regionedit.models.loading import from_components
from regionedit.shapes.model import MiniConfig, build_components, save_pipeline

TINY = MiniConfig(image_size=64, vae_channels=(32, 32, 32), unet_channels=(16, 32, 32), text_width=32)


@pytest.fixture(scope="session")
def tiny_components():
    return build_components(TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_components):
    return from_components(tiny_components, name="tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_components):
    return save_pipeline(tiny_components, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def image64():
    rng = np.random.default_rng(0)
    arr = np.zeros((64, 64, 3), np.uint8) + np.array([128, 128, 128], np.uint8)
    arr[8:24, 8:24] = (220, 40, 40)
    arr[36:56, 30:54] = (40, 80, 220)
    arr = np.clip(arr.astype(int) + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def box(y0, y1, x0, x1, size=64):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m
