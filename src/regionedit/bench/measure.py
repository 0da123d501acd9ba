"""Measuring an edit: wall time, UNet work and peak memory."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Measurement:
    seconds: float = 0.0
    unet_evals: int = 0  # latent evaluations in forward passes (batch rows), every pass counted
    unet_backward_evals: int = 0  # latent evaluations that were also back-propagated
    peak_memory_mb: float = 0.0
    memory_kind: str = ""  # "cuda_max_allocated", "rss_hwm" or "rss_sampled"

    @property
    def unet_work(self) -> float:
        """Forward-equivalents: a backward pass costs about two forwards."""
        return self.unet_evals + 2 * self.unet_backward_evals


@contextlib.contextmanager
def count_unet(unet: torch.nn.Module):
    """Count denoiser latent evaluations (rows of every forward batch) with a forward pre-hook."""
    box = {"evals": 0, "calls": 0}

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))  # UNet / transformer
        box["evals"] += int(sample.shape[0])
        box["calls"] += 1

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Linux resets VmHWM to the current RSS when "5" is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the block: ``torch.cuda.max_memory_allocated`` on CUDA, RSS on CPU.

    CPU peaks come from the kernel's high-water mark (reset per block) where Linux allows
    it, else from sampling RSS every 5 ms with psutil (may miss short spikes).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mb = 0.0
        self.kind = ""
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        elif _reset_rss_peak():
            self.kind = "rss_hwm"
        else:
            import psutil

            self.kind = "rss_sampled"
            proc = psutil.Process()
            self._sampled = proc.memory_info().rss

            def sample():
                while not self._stop.wait(0.005):
                    self._sampled = max(self._sampled, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "rss_hwm":
            self.peak_mb = (_status_kb("VmHWM") or 0) / 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._sampled / 2**20
        return False


@contextlib.contextmanager
def measure(model, device=None):
    """Measure a block that runs ``model``'s UNet; yields a :class:`Measurement` filled on exit.

    The block may add ``unet_backward_evals`` itself (from the editor's timings): a forward
    hook sees every forward but not which ones were back-propagated.
    """
    m = Measurement()
    device = torch.device(device or model.device)
    with count_unet(model.denoiser) as box, PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield m
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        m.seconds = time.perf_counter() - start
    m.unet_evals = box["evals"]
    m.peak_memory_mb = mem.peak_mb
    m.memory_kind = mem.kind
