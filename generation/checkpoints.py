"""Checkpoints on disk: a scan of checkpoints/ into plain records, and safe name resolution."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ModelNotFound
from .hashing import HashCache, sha256_file, sha256_folder, short_hash

CheckpointFormat = Literal["diffusers", "safetensors", "ckpt", "hub"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
VAE_SUFFIX = ".vae.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: str  # absolute path, or the repo id for format "hub"
    format: CheckpointFormat
    architecture: str  # sd1, sd2, sdxl, tiny-sd1, ... or "unknown" for the hub
    sha256: str | None = None
    vae_path: str | None = None
    size: int = 0
    mtime_ns: int = 0

    @property
    def short_hash(self) -> str | None:
        return short_hash(self.sha256) if self.sha256 else None

    @property
    def inpainting(self) -> bool:
        """A dedicated inpainting checkpoint (9-channel UNet: latents + mask + masked image)."""
        from .architectures import ARCHITECTURES

        spec = ARCHITECTURES.get(self.architecture)
        return spec is not None and spec.inpainting


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


def folder_architecture(folder: Path) -> str:
    """Architecture of a diffusers folder from its configs (no weights are read): the pipeline
    class, the text encoders' widths, the UNet's input channels (9: an inpainting model) and, for
    SD 2.x, the scheduler's prediction type."""
    from .architectures import ARCHITECTURES

    def config(part: str) -> dict:
        try:
            return json.loads((folder / part).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}

    xl = "XL" in str(config("model_index.json").get("_class_name", ""))
    widths = tuple(width for width in (config(f"{part}/config.json").get("hidden_size")
                                       for part in ("text_encoder", "text_encoder_2")) if width)
    in_channels = config("unet/config.json").get("in_channels", 4)
    found = [spec.name for spec in ARCHITECTURES.values()
             if spec.text_widths == widths and (spec.family == "sdxl") == xl and spec.unet_in_channels == in_channels]
    if {"sd2", "sd2-base"} <= set(found):  # a folder, unlike a single file, says what it predicts
        v_prediction = config("scheduler/scheduler_config.json").get("prediction_type") == "v_prediction"
        return "sd2" if v_prediction else "sd2-base"
    if len(found) == 1:
        return found[0]
    return {4: "sdxl", 9: "sdxl-inpaint"}.get(in_channels, "unknown") if xl else "unknown"


_V_PARAMETERIZATION = re.compile(r"^\s*parameterization:\s*[\"']?v[\"']?\s*$", re.MULTILINE)
_MAX_YAML_BYTES = 64 * 1024


def single_file_architecture(path: Path) -> str:
    """`detect_architecture`, plus A1111's `<name>.yaml` beside an SD 2.x file: the weights of
    SD 2.x 768-v and 512-base look alike, the config says which one predicts v."""
    from .architectures import detect_architecture

    return with_sd2_config(detect_architecture(path), path)


def with_sd2_config(architecture: str, path: Path) -> str:
    """Turn "sd2" into "sd2-base" when a config beside the file does not say `parameterization: "v"`."""
    config = path.with_suffix(".yaml")
    if architecture != "sd2" or not config.is_file() or config.stat().st_size > _MAX_YAML_BYTES:
        return architecture
    return architecture if _V_PARAMETERIZATION.search(config.read_text(encoding="utf-8", errors="replace")) else "sd2-base"


def scan_checkpoints(folder: Path, *, allow_pickle: bool, hash_cache: HashCache | None = None) -> tuple[list[CheckpointInfo], list[SkippedFile]]:
    """Every usable checkpoint directly inside `folder`, sorted by name, and what was skipped and why."""
    found: list[CheckpointInfo] = []
    skipped: list[SkippedFile] = []
    if not folder.is_dir():
        return found, skipped
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    stems = [p.name if p.is_dir() else p.stem for p in entries]
    for entry in entries:
        try:
            if entry.is_dir():
                if not (entry / "model_index.json").is_file():
                    continue
                found.append(CheckpointInfo(
                    name=entry.name, path=str(entry.resolve()), format="diffusers",
                    architecture=folder_architecture(entry), sha256=sha256_folder(entry, hash_cache),
                ))
                continue
            if entry.name.endswith(VAE_SUFFIX):
                continue
            suffix = entry.suffix.lower()
            if suffix not in (".safetensors", ".ckpt"):
                continue
            if suffix == ".ckpt" and not allow_pickle:
                skipped.append(SkippedFile(str(entry), ".ckpt is a pickle; set [models] allow_pickle_checkpoints = true to load it"))
                continue
            # A file whose stem is also a folder's name keeps its extension to stay unique.
            name = entry.name if stems.count(entry.stem) > 1 else entry.stem
            architecture = single_file_architecture(entry)
            vae = entry.with_name(entry.stem + VAE_SUFFIX)
            stat = entry.stat()
            found.append(CheckpointInfo(
                name=name, path=str(entry.resolve()), format="safetensors" if suffix == ".safetensors" else "ckpt",
                architecture=architecture, sha256=sha256_file(entry, hash_cache),
                vae_path=str(vae.resolve()) if vae.is_file() else None, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
            ))
        except Exception as exc:  # one broken file must not hide the others
            skipped.append(SkippedFile(str(entry), f"unreadable: {exc}"))
    return found, skipped


def checkpoint_from_path(path: Path, *, allow_pickle: bool, hash_cache: HashCache | None = None) -> CheckpointInfo:
    """An operator-given path (CLI), outside the registry."""
    path = path.expanduser().resolve()
    if path.is_dir() and (path / "model_index.json").is_file():
        return CheckpointInfo(name=path.name, path=str(path), format="diffusers",
                              architecture=folder_architecture(path), sha256=sha256_folder(path, hash_cache))
    if path.is_file() and path.suffix.lower() in (".safetensors", ".ckpt"):
        if path.suffix.lower() == ".ckpt" and not allow_pickle:
            raise ModelNotFound(f"{path.name} is a pickle; set [models] allow_pickle_checkpoints = true to load it")
        vae = path.with_name(path.stem + VAE_SUFFIX)
        return CheckpointInfo(
            name=path.stem, path=str(path), format="safetensors" if path.suffix.lower() == ".safetensors" else "ckpt",
            architecture=single_file_architecture(path),
            sha256=sha256_file(path, hash_cache), vae_path=str(vae) if vae.is_file() else None,
            size=path.stat().st_size, mtime_ns=path.stat().st_mtime_ns,
        )
    raise ModelNotFound(f"{path} is not a diffusers folder, .safetensors or .ckpt file")


def hub_checkpoint(repo_id: str) -> CheckpointInfo:
    return CheckpointInfo(name=repo_id, path=repo_id, format="hub", architecture="unknown")


def safe_child(folder: Path, name: str) -> Path:
    """`folder/name` for a user-given name, refusing anything that would leave the folder."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ModelNotFound(f"invalid name {name!r}")
    root = folder.resolve()
    candidate = (root / name).resolve()
    if candidate.parent != root:
        raise ModelNotFound(f"invalid name {name!r}")
    return candidate
