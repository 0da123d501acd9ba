"""Flow inversion: Euler against Heun (second order) at equal model calls, on the same images.

For each shapes-world scene the clean latent is integrated up to σ = 1 on the model's sigmas:
with Euler (one call per step) at 2T steps and with Heun (two calls per step: Euler's predictor,
then the mean of both velocities) at T steps. The error is the distance of the inverted noise from
a converged reference (Euler at 256 steps), relative to its norm, and the round trip: sampling
back with the editor's Euler sampler at the same number of calls, against the input latent.

    .venv/bin/python docs/bench/flow_inversion.py --model runs/mini-flow/pipeline --scenes 8
"""

import argparse
import json

import numpy as np
import torch
from PIL import Image

import regionedit
from regionedit.shapes.world import caption_for, random_scene, render


def invert(model, z0, cond, steps: int, heun: bool) -> torch.Tensor:
    inverse = model.inverse_scheduler(steps, z0.shape[-2:])
    sig, z = inverse.sigmas, z0
    for i, t in enumerate(inverse.timesteps):
        v = model.predict(z, t, cond)
        dz = (sig[i + 1] - sig[i]) * v
        if heun:
            t_next = sig[i + 1] * 1000
            v2 = model.predict(z + dz, t_next, cond)
            dz = (sig[i + 1] - sig[i]) * (v + v2) / 2
        z = z + dz
    return z


def sample(model, z, cond, steps: int) -> torch.Tensor:
    sched = model.scheduler(steps, z.shape[-2:])
    for t in sched.timesteps:
        z = sched.step(model.predict(z, t, cond), t, z)
    return z


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--calls", default="4,8,16,32")
    args = p.parse_args()
    model = regionedit.load(args.model)
    rng = np.random.default_rng(0)
    rows = {}
    for k in range(args.scenes):
        scene = random_scene(rng, 1 + k % 3, size=model.native_size)
        image, _ = render(scene)
        z0 = model.encode(model.image_to_tensor(Image.fromarray(image)))
        cond = model.encode_prompt([caption_for(scene.objects, scene.background)])
        ref = invert(model, z0, cond, 256, heun=False)
        for calls in (int(c) for c in args.calls.split(",")):
            for name, steps, heun in (("euler", calls, False), ("heun", calls // 2, True)):
                zT = invert(model, z0, cond, steps, heun)
                back = sample(model, zT, cond, calls)
                noise_err = float((zT - ref).norm() / ref.norm())
                trip_err = float((back - z0).norm() / z0.norm())
                rows.setdefault((name, calls), []).append((noise_err, trip_err))
    print("| inversion | model calls | noise error vs converged | round-trip error |")
    print("|---|---:|---:|---:|")
    out = {}
    for (name, calls), vals in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        n = sum(v[0] for v in vals) / len(vals)
        r = sum(v[1] for v in vals) / len(vals)
        out[f"{name}@{calls}"] = {"noise_error": n, "round_trip_error": r}
        print(f"| {name} | {calls} | {n:.4f} | {r:.4f} |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
