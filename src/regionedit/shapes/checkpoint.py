"""Training checkpoints as safetensors (modules + optimiser state) with a JSON sidecar.

Shared by the mini-model and ControlNet recipes; nothing here unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file


def save_checkpoint(folder: Path, name: str, step: int, modules: dict, opt, meta: dict | None = None) -> None:
    """Write ``name.safetensors`` and ``name.json`` atomically."""
    tensors = {f"{m}.{k}": v.contiguous() for m, mod in modules.items() for k, v in mod.state_dict().items()}
    state = opt.state_dict()
    for idx, st in state["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = v.detach().reshape(-1) if v.ndim == 0 else v.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / f"{name}.safetensors.tmp")
    (folder / f"{name}.safetensors.tmp").replace(folder / f"{name}.safetensors")
    info = {**(meta or {}), "phase": name, "step": step, "param_groups": state["param_groups"]}
    (folder / f"{name}.json.tmp").write_text(json.dumps(info))
    (folder / f"{name}.json.tmp").replace(folder / f"{name}.json")


def load_checkpoint(folder: Path, name: str, modules: dict, opt=None) -> int:
    """Restore modules (and the optimiser when given); return the step to go on from (0 if none)."""
    meta_path = folder / f"{name}.json"
    if not meta_path.exists():
        return 0
    meta = json.loads(meta_path.read_text())
    # clone: safetensors buffers may be less aligned than torch's allocator, and SIMD kernels
    # round differently on unaligned edges
    tensors = {k: v.clone() for k, v in load_file(folder / f"{name}.safetensors").items()}
    for m, mod in modules.items():
        prefix = f"{m}."
        mod.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    if opt is not None:
        state: dict = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, idx, k = key.split(".", 2)
                state.setdefault(int(idx), {})[k] = v.reshape(()) if k == "step" else v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])
