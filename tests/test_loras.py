"""generation/loras.py and the registry's LoRAs: scanning, A1111 names, aliases and hashes, the
width a LoRA was trained for (from header shapes only), lookups; `easel models`; bot/model_admin's
LoRA upload checks."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from conftest import make_config
from generation import loras as loras_module
from generation.hashing import MemoryHashCache
from generation.loras import (
    ADDNET_CACHE_SUFFIX,
    LoraInfo,
    addnet_hash,
    lora_width_from_shapes,
    read_lora_metadata,
    scan_loras,
    width_label,
)
from generation.registry import ModelRegistry

RANK = 1

# ------------------------------------------------------------------------------------------- files

SD1_UNET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
SDXL_SGM = "lora_unet_input_blocks_4_1_transformer_blocks_0_"
TEXT = "text_model_encoder_layers_0_self_attn_q_proj"


def kohya(module: str, in_features: int, out_features: int, rank: int = RANK, fill: float = 0.0,
          ) -> dict[str, torch.Tensor]:
    """One kohya/A1111 LoRA layer: lora_down [rank, in], lora_up [out, rank], alpha."""
    return {f"{module}.lora_down.weight": torch.full((rank, in_features), fill),
            f"{module}.lora_up.weight": torch.full((out_features, rank), fill),
            f"{module}.alpha": torch.tensor(float(rank))}


def sd_lora(cross: int, channels: int = 320, text: int | None = None) -> dict[str, torch.Tensor]:
    """SD 1.x (cross 768) or SD 2.x (1024) shaped: self- and cross-attention in the UNet, the text encoder."""
    tensors = {**kohya(SD1_UNET + "attn1_to_q", channels, channels),
               **kohya(SD1_UNET + "attn2_to_q", channels, channels),
               **kohya(SD1_UNET + "attn2_to_k", cross, channels), **kohya(SD1_UNET + "attn2_to_v", cross, channels)}
    text = cross if text is None else text
    tensors |= kohya("lora_te_" + TEXT, text, text)
    tensors |= kohya("lora_te_text_model_encoder_layers_0_mlp_fc2", 4 * text, text)  # in-features 4x: not the width
    return tensors


def sdxl_lora(clip_l: int = 768, clip_g: int = 1280, channels: int = 640, *, unet: bool = True,
              te1: bool = True, te2: bool = True) -> dict[str, torch.Tensor]:
    """SDXL shaped, kohya's sgm UNet names (`input_blocks_4_1`), lora_te1_/lora_te2_."""
    tensors: dict[str, torch.Tensor] = {}
    if unet:
        tensors |= kohya(SDXL_SGM + "attn2_to_k", clip_l + clip_g, channels)
        tensors |= kohya(SDXL_SGM + "attn2_to_v", clip_l + clip_g, channels)
        tensors |= kohya(SDXL_SGM + "attn1_to_k", channels, channels)
    if te1:
        tensors |= kohya("lora_te1_" + TEXT, clip_l, clip_l)
    if te2:
        tensors |= kohya("lora_te2_" + TEXT, clip_g, clip_g)
    return tensors


def tiny_sd1_lora(fill: float = 0.01) -> dict[str, torch.Tensor]:
    """Layers of the tiny SD-1.x test model (cross-attention and text encoder of width 32)."""
    block = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_"
    return {**kohya(block + "attn2_to_k", 32, 64, fill=fill), **kohya(block + "attn2_to_v", 32, 64, fill=fill),
            **kohya("lora_te_" + TEXT, 32, 32, fill=fill)}


def shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()}


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def independent_addnet(path: Path) -> str:
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length:]).hexdigest()


# ------------------------------------------------------------------------------------------- widths


def test_width_of_sd1_sd2_and_sdxl_shaped_files():
    assert lora_width_from_shapes(shapes(sd_lora(768))) == 768
    assert lora_width_from_shapes(shapes(sd_lora(1024))) == 1024
    assert lora_width_from_shapes(shapes(sdxl_lora())) == 2048
    assert [width_label(w) for w in (768, 1024, 2048)] == ["SD 1.x", "SD 2.x", "SDXL"]


def test_width_from_either_part_alone():
    unet_only = {k: v for k, v in sd_lora(768).items() if k.startswith("lora_unet_")}
    text_only = {k: v for k, v in sd_lora(1024).items() if k.startswith("lora_te_")}
    assert lora_width_from_shapes(shapes(unet_only)) == 768
    assert lora_width_from_shapes(shapes(text_only)) == 1024
    assert lora_width_from_shapes(shapes(sdxl_lora(unet=False))) == 2048  # clip_l 768 + clip_g 1280
    assert lora_width_from_shapes(shapes(sdxl_lora(unet=False, te2=False))) == 2048  # lora_te1_ is SDXL's own
    assert lora_width_from_shapes(shapes(sdxl_lora(unet=False, te1=False))) == 2048


def test_width_of_the_tiny_models():
    assert lora_width_from_shapes(shapes(tiny_sd1_lora())) == 32
    assert lora_width_from_shapes(shapes(sdxl_lora(32, 64, 64))) == 96
    assert lora_width_from_shapes(shapes(sdxl_lora(32, 64, 64, unet=False, te2=False))) == 96
    assert [width_label(w) for w in (32, 96)] == ["tiny SD 1.x", "tiny SDXL"]


def test_width_of_peft_diffusers_and_lycoris_layouts():
    peft = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048),
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 4),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 768),
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 1280)}
    assert lora_width_from_shapes(peft) == 2048
    text_only = {k: v for k, v in peft.items() if k.startswith("text_encoder")}
    assert lora_width_from_shapes(text_only) == 2048
    sd1_text = {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 768)}
    assert lora_width_from_shapes(sd1_text) == 768  # a lone text_encoder. is SD 1.x's
    processor = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora"
    processors = {f"{processor}.down.weight": (4, 1024), f"{processor}.up.weight": (320, 4)}
    assert lora_width_from_shapes(processors) == 1024
    loha = {f"{SD1_UNET}attn2_to_v.hada_w1_a": (320, 4), f"{SD1_UNET}attn2_to_v.hada_w1_b": (4, 768),
            f"{SD1_UNET}attn2_to_v.hada_w2_a": (320, 4), f"{SD1_UNET}attn2_to_v.hada_w2_b": (4, 768)}
    assert lora_width_from_shapes(loha) == 768
    lokr = {f"{SDXL_SGM}attn2_to_k.lokr_w1": (8, 16), f"{SDXL_SGM}attn2_to_k.lokr_w2_a": (80, 4),
            f"{SDXL_SGM}attn2_to_k.lokr_w2_b": (4, 128)}
    assert lora_width_from_shapes(lokr) == 2048  # kron: 16 * 128


@pytest.fixture(scope="module")
def tiny_pipes():
    from generation.testing import build_tiny_pipeline

    return {architecture: build_tiny_pipeline(architecture=architecture) for architecture in ("tiny-sd1", "tiny-sdxl")}


@pytest.mark.parametrize("kind", ["lora", "locon", "loha", "lokr", "peft"])
@pytest.mark.parametrize(("architecture", "width"), [("tiny-sd1", 32), ("tiny-sdxl", 96)])
@pytest.mark.parametrize("parts", ["both", "unet", "text"])
def test_width_of_every_tiny_layout_the_lora_writer_makes(tiny_pipes, tmp_path, kind, architecture, width, parts):
    from generation.lora_networks import read_lora_file
    from generation.lora_testing import write_tiny_lora

    tiny = write_tiny_lora(tmp_path / f"{kind}.safetensors", tiny_pipes[architecture], kind=kind,
                           unet=parts != "text", text_encoders=parts != "unet")
    assert lora_width_from_shapes(shapes(tiny.tensors)) == width
    (info,) = scan_loras(tmp_path, allow_pickle=False, expected_widths={width})
    assert info.usable and info.width == width
    if parts == "both":  # what lora_networks reads agrees
        assert read_lora_file(tiny.path).width() == width


def test_unknown_or_inconsistent_widths_are_none():
    assert lora_width_from_shapes({}) is None
    self_attention_only = {k: v for k, v in shapes(sd_lora(768)).items() if "attn1" in k}
    assert lora_width_from_shapes(self_attention_only) is None
    assert lora_width_from_shapes(shapes(sd_lora(768, text=1024))) is None  # UNet and text encoder disagree
    mixed = shapes(kohya(SD1_UNET + "attn2_to_k", 768, 320) | kohya(SD1_UNET + "attn2_to_v", 1024, 320))
    assert lora_width_from_shapes(mixed) is None
    assert width_label(None) == "unknown family" and width_label(12345) == "width 12345"


# ------------------------------------------------------------------------------------------- hashes


def test_addnet_hash_is_sha256_after_the_header(tmp_path):
    path = write(tmp_path / "style.safetensors", sd_lora(768), {"ss_output_name": "style", "note": "x"})
    assert addnet_hash(path) == independent_addnet(path)
    assert addnet_hash(path) != hashlib.sha256(path.read_bytes()).hexdigest()
    # other metadata, the same weights: A1111's hash does not change (the header is not hashed)
    other = write(tmp_path / "renamed.safetensors", sd_lora(768), {"ss_output_name": "something else entirely"})
    assert other.read_bytes() != path.read_bytes() and addnet_hash(other) == addnet_hash(path)
    assert scan_loras(tmp_path / "missing", allow_pickle=False) == []  # no folder: nothing


def test_addnet_hash_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(loras_module, "_CHUNK", 7)
    path = write(tmp_path / "chunked.safetensors", sd_lora(768))
    assert addnet_hash(path) == independent_addnet(path)


def test_scan_hash_short_hash_and_sshs_model_hash(tmp_path):
    folder = tmp_path / "loras"
    plain = write(folder / "plain.safetensors", sd_lora(768))
    declared = "ABCDEF0123456789" * 4
    write(folder / "declared.safetensors", sd_lora(768), {"sshs_model_hash": declared})
    write(folder / "junkhash.safetensors", sd_lora(768), {"sshs_model_hash": "x, Lora hashes: evil"})
    found = {info.name: info for info in scan_loras(folder, allow_pickle=False)}
    assert found["plain"].hash == independent_addnet(plain)
    assert found["plain"].short_hash == independent_addnet(plain)[:12]
    assert found["declared"].hash == declared.lower()  # sshs_model_hash wins
    assert found["declared"].short_hash == "abcdef012345"
    assert found["junkhash"].hash == independent_addnet(folder / "junkhash.safetensors")  # not a hash: ignored


def test_hashes_are_cached_under_a_key_of_their_own(tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    path = write(folder / "cached.safetensors", sd_lora(768))
    cache = MemoryHashCache()
    scan_loras(folder, allow_pickle=False, hash_cache=cache)
    stat = path.stat()
    key = Path(str(folder / "cached.safetensors") + ADDNET_CACHE_SUFFIX)
    assert cache.get(key, stat.st_size, stat.st_mtime_ns) == independent_addnet(path)
    assert cache.get(folder / "cached.safetensors", stat.st_size, stat.st_mtime_ns) is None  # the full sha256's key

    def no_hashing(_path):
        raise AssertionError("hashed again")

    monkeypatch.setattr(loras_module, "_addnet_digest", no_hashing)
    (info,) = scan_loras(folder, allow_pickle=False, hash_cache=cache)
    assert info.hash == independent_addnet(path)


# ------------------------------------------------------------------------------------------- scanning


def test_scan_names_aliases_formats_and_skip_reasons(tmp_path):
    folder = tmp_path / "loras"
    write(folder / "Style.safetensors", sd_lora(768), {"ss_output_name": "my_style_v2"})
    write(folder / "style.safetensors", sd_lora(768), {"ss_output_name": "style"})  # alias = name: none
    write(folder / "MixedCase v1.safetensors", sd_lora(1024))  # A1111 names may have spaces
    write(folder / "checkpointish.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})
    write(folder / "embeddingish.safetensors", {"emb_params": torch.zeros(1, 768)})
    (folder / "broken.safetensors").write_bytes(b"\x00" * 20)
    write(folder / "a:b.safetensors", sd_lora(768))
    torch.save(sd_lora(768), folder / "pickled.pt")
    torch.save(sd_lora(768), folder / "legacy.ckpt")
    write(folder / "dup.safetensors", sd_lora(768))
    torch.save(sd_lora(768), folder / "dup.pt")
    (folder / "notes.txt").write_text("not a LoRA")
    (folder / ".hidden.upload").write_bytes(b"partial")
    (folder / "sub.safetensors").mkdir()
    write(folder / "nested" / "deep.safetensors", sd_lora(768))  # flat: subfolders are not searched

    found = scan_loras(folder, allow_pickle=False)
    by_file = {info.path.name: info for info in found}
    assert sorted(by_file) == sorted(["Style.safetensors", "style.safetensors", "MixedCase v1.safetensors",
                                      "checkpointish.safetensors", "embeddingish.safetensors", "broken.safetensors",
                                      "a:b.safetensors", "pickled.pt", "legacy.ckpt", "dup.safetensors", "dup.pt"])
    assert [info.name for info in found] == sorted(info.name for info in found)
    style = by_file["Style.safetensors"]
    assert (style.name, style.alias, style.format, style.width, style.usable) == ("Style", "my_style_v2",
                                                                                  "safetensors", 768, True)
    assert style.path == (folder / "Style.safetensors").resolve() and style.tag == "<lora:Style:1>"
    assert by_file["style.safetensors"].alias is None
    assert by_file["MixedCase v1.safetensors"].usable and by_file["MixedCase v1.safetensors"].family == "SD 2.x"
    reasons = {name: info.skip_reason for name, info in by_file.items() if not info.usable}
    assert reasons == {
        "checkpointish.safetensors": "not a LoRA: it looks like a checkpoint (those go in checkpoints/)",
        "embeddingish.safetensors": "not a LoRA: it looks like a textual inversion embedding (those go in embeddings/)",
        "broken.safetensors": "broken.safetensors is not a valid .safetensors file (bad header)",
        "a:b.safetensors": "its name cannot be written in <lora:name:weight> (no : < > or line breaks)",
        "pickled.pt": ".pt is a pickle; set [models] allow_pickle_checkpoints = true to load it",
        "legacy.ckpt": ".ckpt is a pickle; set [models] allow_pickle_checkpoints = true to load it",
        "dup.pt": ".pt is a pickle; set [models] allow_pickle_checkpoints = true to load it",
    }
    assert by_file["dup.safetensors"].usable
    assert by_file["pickled.pt"].hash == ""  # a refused pickle is not even hashed


def test_pickles_load_only_when_allowed(tmp_path):
    folder = tmp_path / "loras"
    torch.save(sd_lora(768), folder.mkdir() or folder / "pickled.pt")
    write(folder / "dup.safetensors", sd_lora(768))
    torch.save(sd_lora(1024), folder / "dup.pt")
    found = {info.path.name: info for info in scan_loras(folder, allow_pickle=True)}
    pickled = found["pickled.pt"]
    assert (pickled.format, pickled.width, pickled.usable) == ("pt", 768, True)
    assert pickled.hash == hashlib.sha256((folder / "pickled.pt").read_bytes()).hexdigest()  # the whole file's
    assert found["dup.safetensors"].usable  # of one name, the .safetensors file wins
    assert found["dup.pt"].skip_reason == "another file has the same name"


def test_links_out_of_the_folder_are_skipped(tmp_path):
    folder = tmp_path / "loras"
    outside = write(tmp_path / "elsewhere" / "secret.safetensors", sd_lora(768))
    write(folder / "real.safetensors", sd_lora(768))
    (folder / "escape.safetensors").symlink_to(outside)
    (folder / "inside.safetensors").symlink_to(folder / "real.safetensors")
    (folder / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    found = {info.name: info for info in scan_loras(folder, allow_pickle=False)}
    assert found["escape"].skip_reason == "it is a link to a file outside the loras folder"
    assert found["escape"].hash == ""
    assert found["inside"].usable and found["real"].usable
    assert "dangling" not in found  # not a file


def test_a_linked_folder_is_scanned(tmp_path):
    real = tmp_path / "real-loras"
    write(real / "style.safetensors", sd_lora(768))
    (tmp_path / "loras").symlink_to(real, target_is_directory=True)
    (info,) = scan_loras(tmp_path / "loras", allow_pickle=False)
    assert info.usable and info.name == "style"


def test_widths_judged_against_the_checkpoints_present(tmp_path):
    folder = tmp_path / "loras"
    write(folder / "sd1.safetensors", sd_lora(768))
    write(folder / "xl.safetensors", sdxl_lora())
    write(folder / "selfonly.safetensors", kohya(SD1_UNET + "attn1_to_q", 320, 320))
    found = {info.name: info for info in scan_loras(folder, allow_pickle=False, expected_widths={768})}
    assert found["sd1"].usable
    assert found["xl"].skip_reason == "made for SDXL (width 2048); the checkpoints here are SD 1.x"
    assert found["selfonly"].usable and found["selfonly"].width is None  # unknown: judged when used
    found = {info.name: info for info in scan_loras(folder, allow_pickle=False, expected_widths={768, 2048})}
    assert found["xl"].usable
    found = {info.name: info for info in scan_loras(folder, allow_pickle=False, expected_widths={1024, 32})}
    assert found["sd1"].skip_reason == "made for SD 1.x (width 768); the checkpoints here are tiny SD 1.x or SD 2.x"


def test_metadata(tmp_path):
    path = write(tmp_path / "m.safetensors", sd_lora(768), {"ss_output_name": "alias", "sshs_model_hash": "ab" * 32})
    assert read_lora_metadata(path) == {"ss_output_name": "alias", "sshs_model_hash": "ab" * 32}
    assert read_lora_metadata(write(tmp_path / "none.safetensors", sd_lora(768))) == {}
    assert read_lora_metadata(tmp_path / "x.pt") == {}


def test_lora_info_short_hash_and_usable():
    info = LoraInfo(name="a", path=Path("/x/a.safetensors"), format="safetensors", hash="ABCDEF0123456789ff")
    assert info.short_hash == "abcdef012345" and info.usable and info.family == "unknown family"
    assert not LoraInfo(name="a", path=Path("a.pt"), format="pt", skip_reason="no").usable


# ------------------------------------------------------------------------------------------- registry


def registry_with(models_dir, tmp_path, **sections) -> ModelRegistry:
    """The shared tiny checkpoints (width 32) and a loras folder of this test's own."""
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    if not (root / "checkpoints").exists():
        (root / "checkpoints").symlink_to(models_dir / "checkpoints", target_is_directory=True)
    registry = ModelRegistry.from_config(make_config(root, tmp_path / "data", **sections))
    assert registry.loras_dir == root / "loras"
    return registry


def test_registry_lookups_by_name_alias_and_hash(models_dir, tmp_path):
    registry = registry_with(models_dir, tmp_path)
    assert registry.refresh().loras == () and registry.lora("anything") is None
    folder = registry.loras_dir
    tiny = write(folder / "tinystyle.safetensors", tiny_sd1_lora(0.5), {"ss_output_name": "Tiny Style"})
    write(folder / "other.safetensors", tiny_sd1_lora(), {"ss_output_name": "tinystyle2", "sshs_model_hash": "12" * 32})
    write(folder / "shared1.safetensors", tiny_sd1_lora(), {"ss_output_name": "twins"})
    write(folder / "shared2.safetensors", tiny_sd1_lora(), {"ss_output_name": "twins"})
    write(folder / "Tiny Style.safetensors", sd_lora(768))  # a name beats another file's alias
    snapshot = registry.refresh()
    assert [lora.name for lora in snapshot.loras] == [lora.name for lora in registry.loras]
    assert registry.lora("tinystyle").path == tiny.resolve()
    assert registry.lora("tinystyle").usable and registry.lora("tinystyle").width == 32
    assert registry.lora("TinyStyle") is None  # case-sensitive, as in A1111
    assert registry.lora("tinystyle2").name == "other"  # by alias
    assert registry.lora("Tiny Style").name == "Tiny Style"
    assert registry.lora("Tiny Style").skip_reason == ("made for SD 1.x (width 768); the checkpoints here are "
                                                       "tiny SD 1.x")
    assert registry.lora("twins") is None  # an alias two files share finds neither
    short = registry.lora("tinystyle").short_hash
    assert registry.lora_by_hash(short).name == "tinystyle"
    assert registry.lora_by_hash(short.upper()).name == "tinystyle"
    assert registry.lora_by_hash(registry.lora("tinystyle").hash).name == "tinystyle"
    assert registry.lora_by_hash("121212121212").name == "other"
    assert registry.lora_by_hash("000000000000") is None and registry.lora_by_hash("") is None
    # the same weights under two names: a usable one answers
    assert registry.lora_by_hash(registry.lora("shared1").short_hash).usable

    (folder / "other.safetensors").unlink()
    registry.refresh()
    assert registry.lora("other") is None and registry.lora("tinystyle2") is None


def test_registry_pickles_follow_the_checkpoint_setting_and_add_external_keeps_loras(models_dir, tmp_path):
    registry = registry_with(models_dir, tmp_path, models={"allow_pickle_checkpoints": True})
    torch.save(tiny_sd1_lora(), registry.loras_dir.mkdir(parents=True) or registry.loras_dir / "old.pt")
    registry.refresh()
    assert registry.lora("old").usable and registry.lora("old").format == "pt"
    registry.add_external(registry.checkpoints[0])
    assert registry.lora("old") is not None


def test_easel_models_lists_loras(models_dir, tmp_path, capsys):
    from cli.commands import _print_models

    registry = registry_with(models_dir, tmp_path)
    registry.refresh()
    _print_models(registry)
    assert f"loras in {registry.loras_dir}:\n  (none)" in capsys.readouterr().out
    write(registry.loras_dir / "tinystyle.safetensors", tiny_sd1_lora(), {"ss_output_name": "Tiny Style"})
    write(registry.loras_dir / "big.safetensors", sdxl_lora())
    registry.refresh()
    _print_models(registry)
    out = capsys.readouterr().out
    short = registry.lora("tinystyle").short_hash
    assert f"  tinystyle{' ' * 23} [{short}] safetensors tiny SD 1.x (32)  alias Tiny Style\n" in out
    assert "skipped big.safetensors: made for SDXL (width 2048); the checkpoints here are tiny SD 1.x" in out


# ------------------------------------------------------------------------------------------- uploads

from bot import model_admin  # noqa: E402
from bot.model_admin import MAX_LORA_BYTES, add_lora, check_lora_size, lora_name  # noqa: E402
from generation.errors import EaselError  # noqa: E402


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch):
    """The system temporary folder, made private so a test can see that nothing is left in it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
async def app(models_dir, tmp_path, scratch_tmp):
    from generation.catalog import refresh_models
    from storage import open_store

    registry = registry_with(models_dir, tmp_path)
    write(registry.loras_dir / "existing.safetensors", tiny_sd1_lora(), {"ss_output_name": "existing_alias"})
    config = make_config(tmp_path / "models", tmp_path / "data")
    store = await open_store(tmp_path / "easel.db")
    try:
        await refresh_models(registry, store)
        yield SimpleNamespace(config=config, store=store, registry=registry)
    finally:
        await store.close()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_upload_names_and_sizes():
    assert lora_name("my-style_v2.1.safetensors") == "my-style_v2.1"
    assert lora_name("Style.SAFETENSORS") == "Style"
    for bad, message in [("x.pt", "only .safetensors LoRAs"), ("x.ckpt", "only .safetensors LoRAs"),
                         ("x", "only .safetensors LoRAs"), ("two words.safetensors", "one word"),
                         (".hidden.safetensors", "one word"), ("a/b.safetensors", "must not contain a path"),
                         ("a\\b.safetensors", "must not contain a path"), ("x" * 65 + ".safetensors", "at most 64"),
                         ("a:b.safetensors", "one word"), ("<lora>.safetensors", "one word")]:
        with pytest.raises(EaselError, match=message):
            lora_name(bad)
    check_lora_size(MAX_LORA_BYTES)
    with pytest.raises(EaselError, match=r"the file is 256.0 MiB; LoRAs may be at most 256 MiB"):
        check_lora_size(MAX_LORA_BYTES + 1)
    with pytest.raises(EaselError, match="empty"):
        check_lora_size(0)


async def test_a_good_upload_is_saved_and_listed(app, scratch_tmp):
    folder = app.registry.loras_dir
    before = listing(folder)
    data = safetensors_bytes(tiny_sd1_lora(), metadata={"ss_output_name": "fresh_v1"})
    added = await add_lora(app, filename="fresh.safetensors", data=data)
    assert (added.name, added.width, added.family, added.alias) == ("fresh", 32, "tiny SD 1.x", "fresh_v1")
    assert listing(folder) == sorted([*before, "fresh.safetensors"])  # no temporary file beside it
    assert (folder / "fresh.safetensors").read_bytes() == data
    assert list(scratch_tmp.iterdir()) == []
    info = app.registry.lora("fresh")
    assert info.usable and info.short_hash == added.short_hash == independent_addnet(folder / "fresh.safetensors")[:12]
    assert app.registry.lora("fresh_v1") is info
    with pytest.raises(EaselError, match="a LoRA named fresh already exists"):
        await add_lora(app, filename="fresh.safetensors", data=safetensors_bytes(tiny_sd1_lora()))
    assert (folder / "fresh.safetensors").read_bytes() == data


@pytest.mark.parametrize(("filename", "data", "message"), [
    ("other.pt", b"\x80\x02}q\x00.", "only .safetensors LoRAs can be uploaded"),
    ("existing.safetensors", None, "a LoRA named existing already exists; rename the file"),
    ("existing_alias.safetensors", None, "a LoRA named existing_alias already exists"),
    ("junk.safetensors", b"\x00" * 64, "not a readable .safetensors LoRA"),
    ("ckpt.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)},
     "not a LoRA: it looks like a checkpoint"),
    ("badkeys.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(1, 32), "surprise": torch.zeros(1)},
     "has a key easel does not understand: surprise"),
    ("dora.safetensors", tiny_sd1_lora() | {f"{SD1_UNET}attn2_to_k.dora_scale": torch.zeros(1, 32)}, "DoRA"),
    ("sd1.safetensors", sd_lora(768), r"made for SD 1.x \(width 768\), but the checkpoints here are tiny SD 1.x"),
    ("xl.safetensors", sdxl_lora(), r"made for SDXL \(width 2048\)"),
    ("selfonly.safetensors", kohya(SD1_UNET + "attn1_to_q", 32, 32), "cannot tell which model family"),
])
async def test_refused_uploads_leave_nothing_behind(app, scratch_tmp, filename, data, message):
    folder = app.registry.loras_dir
    before = listing(folder)
    if data is None:
        data = safetensors_bytes(tiny_sd1_lora())
    elif isinstance(data, dict):
        data = safetensors_bytes(data)
    with pytest.raises(EaselError, match=message):
        await add_lora(app, filename=filename, data=data)
    assert listing(folder) == before
    assert list(scratch_tmp.iterdir()) == []


async def test_a_text_encoder_only_peft_upload_is_judged_by_its_encoder(app, scratch_tmp):
    from generation.lora_testing import write_tiny_lora
    from generation.testing import build_tiny_pipeline

    tiny = write_tiny_lora(scratch_tmp / "made.safetensors", build_tiny_pipeline(), kind="peft", unet=False)
    data = tiny.path.read_bytes()
    tiny.path.unlink()
    added = await add_lora(app, filename="textonly.safetensors", data=data)
    assert (added.width, added.family) == (32, "tiny SD 1.x")  # a lone text_encoder. is SD 1.x's only one


async def test_oversize_bytes_are_refused_whatever_was_declared(app, monkeypatch):
    monkeypatch.setattr(model_admin, "MAX_LORA_BYTES", 100)
    with pytest.raises(EaselError, match="LoRAs may be at most"):
        await add_lora(app, filename="fresh.safetensors", data=safetensors_bytes(tiny_sd1_lora()))
    assert app.registry.lora("fresh") is None


async def test_without_checkpoints_nothing_can_be_checked(app):
    app.registry._snapshot = type(app.registry.snapshot)(loras=app.registry.loras)
    with pytest.raises(EaselError, match="no checkpoint here has a known model family"):
        await add_lora(app, filename="fresh.safetensors", data=safetensors_bytes(tiny_sd1_lora()))


async def test_a_file_the_scan_refuses_is_removed_again(app, monkeypatch, scratch_tmp):
    folder = app.registry.loras_dir
    before = listing(folder)
    real_scan = loras_module.scan_loras

    def scan_refusing_fresh(*args, **kwargs):
        found = real_scan(*args, **kwargs)
        return [LoraInfo(name=i.name, path=i.path, format=i.format, hash=i.hash, skip_reason="refused in a test")
                if i.name == "fresh" else i for i in found]

    monkeypatch.setattr("generation.registry.scan_loras", scan_refusing_fresh)
    with pytest.raises(EaselError, match=r"saved but could not be used \(refused in a test\); it was removed again"):
        await add_lora(app, filename="fresh.safetensors", data=safetensors_bytes(tiny_sd1_lora()))
    assert listing(folder) == before and app.registry.lora("fresh") is None


def test_lora_files_are_never_replaced(tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "raced.safetensors").write_bytes(b"the original")
    exists = model_admin.LoraUploadError("a LoRA named raced already exists")
    with pytest.raises(EaselError, match="a LoRA named raced already exists"):
        model_admin._write_new_file(folder, "raced.safetensors", b"the upload", exists=exists)
    assert listing(folder) == ["raced.safetensors"] and (folder / "raced.safetensors").read_bytes() == b"the original"

    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(EaselError, match="already exists"):
        model_admin._write_new_file(folder, "raced.safetensors", b"the upload", exists=exists)
    model_admin._write_new_file(folder, "fresh.safetensors", b"new", exists=exists)
    assert listing(folder) == ["fresh.safetensors", "raced.safetensors"]
