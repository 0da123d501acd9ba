"""Batch manifests: one JSON object per line, one edit job per object.

Every line is checked before any job runs, so a typo on line 900 fails in a second, not
after hours. Paths are relative to the manifest and must stay inside its folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import methods
from ..edit_api import SPEC_FIELDS, EditRequest, check_spec, masks_from_json
from ..errors import InvalidInputError

MANIFEST_FIELDS = {
    "id": (str,),
    **{k: v for k, v in SPEC_FIELDS.items() if k not in ("model", "out")},
}
REQUIRED = ("id", "image", "masks", "prompts", "background_prompt")
# An id names the output file: no separators, no leading dot (hidden files, "..").
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class Job:
    """One manifest line with its paths resolved; plain data so it can cross to Ray workers."""

    id: str
    image: str
    masks: list  # paths (resolved) or mask queries as JSON objects (words, points, box)
    prompts: list[str]
    background_prompt: str
    negative_prompts: list[str] = field(default_factory=list)
    method: str = "lomoe"
    seed: int = 0
    options: dict = field(default_factory=dict)  # over the model's settings, as on the CLI
    execution: dict = field(default_factory=dict)
    resize: str | None = None
    controls: list[str] = field(default_factory=list)  # multimodal: "KIND=PATH|auto", paths resolved
    control_scales: list[float] = field(default_factory=list)
    controlnets: dict = field(default_factory=dict)  # multimodal: kind -> folder, resolved
    detector: str | None = None  # words -> boxes (hub id or folder) for mask queries
    segmenter: str | None = None
    line: int = 0
    fingerprint: str = ""  # sha256 of the manifest object: tells a changed job from a done one

    def request(self, model: str) -> EditRequest:
        return EditRequest(
            image=self.image,
            masks=masks_from_json(self.masks, where=f"line {self.line} mask"),
            prompts=list(self.prompts),
            negative_prompts=list(self.negative_prompts),
            background_prompt=self.background_prompt,
            method=self.method,
            seed=self.seed,
            options=dict(self.options),
            execution=dict(self.execution),
            model=model,
            resize=self.resize,
            controls=list(self.controls),
            control_scales=list(self.control_scales),
            controlnets=dict(self.controlnets),
            detector=self.detector,
            segmenter=self.segmenter,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


def _inside(base: Path, value: str, where: str, key: str) -> str:
    path = (base / value).resolve()
    if not path.is_relative_to(base):
        raise InvalidInputError(
            f"{where}: {key} {value!r} points outside the manifest's folder {base}; "
            "put the files next to the manifest (paths are relative to it)"
        )
    return str(path)


def _control(base: Path, item: str, where: str) -> str:
    """``KIND=PATH`` with the path resolved (``KIND=auto`` as it is)."""
    from ..multimodal.request import resolve_control, split_pairs

    kind, value = split_pairs([item], f"{where}: a control")[0]
    return f"{kind}={resolve_control(value, lambda v: _inside(base, v, where, f'{kind} control'))}"


def _folder_or_id(base: Path, value: str | None) -> str | None:
    """A detector or segmenter: a folder beside the manifest (resolved), else a hub id as given."""
    return str((base / value).resolve()) if value and (base / value).is_dir() else value


def _net_folder(base: Path, value: str, where: str, kind: str) -> str:
    """A ControlNet folder: shared weights, so an absolute path may lie anywhere."""
    return value if Path(value).is_absolute() else _inside(base, value, where, f"{kind} ControlNet")


def _check_counts(job: Job, where: str) -> None:
    """The method's checks that need no file: counts and controls (the rest when the job runs)."""
    from ..errors import RegionEditError

    try:
        methods.get(job.method).check_request(job.request(""))
    except RegionEditError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def parse_job(obj, base: Path, where: str) -> Job:
    """Check one manifest object and resolve its paths against ``base`` (already resolved)."""
    check_spec(obj, where, MANIFEST_FIELDS)
    optional = () if methods.get(obj.get("method")).masks_required else ("masks",)  # none: estimated
    required = [k for k in REQUIRED if k not in optional]
    missing = [k for k in required if k not in obj]
    if missing:
        raise InvalidInputError(
            f"{where}: missing {', '.join(missing)}; every job needs {', '.join(required)}"
        )
    if not ID_PATTERN.fullmatch(obj["id"]):
        raise InvalidInputError(
            f"{where}: id {obj['id']!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it names the output file)"
        )
    masks = obj.get("masks", [])
    masks = [masks] if isinstance(masks, (str, dict)) else masks
    prompts = [obj["prompts"]] if isinstance(obj["prompts"], str) else obj["prompts"]
    negatives = obj.get("negative_prompts", [])
    negatives = [negatives] if isinstance(negatives, str) else negatives
    controls = [obj["controls"]] if isinstance(obj.get("controls"), str) else obj.get("controls", [])
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    job = Job(
        id=obj["id"],
        image=_inside(base, obj["image"], where, "image"),
        masks=[
            _inside(base, m, where, f"mask {i}") if isinstance(m, str) else m
            for i, m in enumerate(masks, start=1)
        ],
        prompts=list(prompts),
        background_prompt=obj["background_prompt"],
        negative_prompts=list(negatives),
        method=methods.get(obj.get("method")).name,
        seed=obj.get("seed", 0),
        options=dict(obj.get("options", {})),
        execution=dict(obj.get("execution", {})),
        resize=obj.get("resize"),
        controls=[_control(base, c, where) for c in controls],
        control_scales=list(obj.get("control_scales", [])),
        controlnets={k: _net_folder(base, v, where, k) for k, v in obj.get("controlnets", {}).items()},
        detector=_folder_or_id(base, obj.get("detector")),
        segmenter=_folder_or_id(base, obj.get("segmenter")),
        line=0,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
    )
    _check_counts(job, where)
    return job


def load_manifest(path: str | Path) -> list[Job]:
    """Read and check a whole JSONL manifest; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read manifest {path}: {exc}") from None
    base = path.parent.resolve()
    jobs, seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{where} is not valid JSON: {exc}") from None
        job = parse_job(obj, base, where)
        job.line = number
        # Case-insensitive, as on macOS and Windows file systems two such ids share one file.
        key = job.id.casefold()
        if key in seen:
            raise InvalidInputError(f"{where}: id {job.id!r} repeats line {seen[key]}; ids must be unique")
        seen[key] = number
        jobs.append(job)
    if not jobs:
        raise InvalidInputError(f"manifest {path} holds no jobs")
    return jobs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; None means the whole manifest."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) == 0 or int(m.group(1)) >= int(m.group(2)):
        raise InvalidInputError(
            f"--shard must be I/N with 0 <= I < N (e.g. 0/4 ... 3/4 for four machines), got {text!r}"
        )
    return int(m.group(1)), int(m.group(2))


def select_shard(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    """Jobs ``I, I+N, I+2N, ...`` of the manifest (by position): disjoint shards, all jobs covered."""
    if shard is None:
        return jobs
    i, n = shard
    return jobs[i::n]
