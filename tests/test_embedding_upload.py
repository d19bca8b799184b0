"""bot/model_admin.py: an uploaded embedding is checked (values, norms, count, trigger word) and
written without ever replacing a file or leaving a temporary one behind."""

from __future__ import annotations

import errno
import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from bot import model_admin
from bot.model_admin import (
    MAX_EMBEDDING_NORM,
    MAX_UPLOADED_EMBEDDINGS,
    add_embedding,
    check_embedding_count,
    check_embedding_values,
    check_trigger_is_unique,
)
from conftest import EMBEDDING_WIDTH, make_config, tiny_request, write_embeddings
from generation.errors import EmbeddingError


def vectors(count: int = 1, width: int = EMBEDDING_WIDTH, scale: float = 0.4) -> torch.Tensor:
    """Vectors of about the size of real ones (each of norm `scale` on average)."""
    tensor = torch.randn(count, width, generator=torch.Generator().manual_seed(11))
    return tensor / tensor.norm(dim=1, keepdim=True) * scale


def upload(tensor: torch.Tensor) -> bytes:
    return safetensors_bytes({"emb_params": tensor.contiguous()})


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch):
    """The system temporary folder, made private so a test can see that nothing is left in it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
async def app(models_dir, tmp_path, scratch_tmp):
    """The shared tiny checkpoint with an embeddings folder of this test's own; a real store and registry."""
    from generation.catalog import refresh_models
    from generation.engine import Engine
    from generation.registry import ModelRegistry
    from storage import open_store

    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").symlink_to(models_dir / "checkpoints", target_is_directory=True)
    write_embeddings(root / "embeddings")
    config = make_config(root, tmp_path / "data")
    registry = ModelRegistry.from_config(config)
    store = await open_store(tmp_path / "easel.db")
    try:
        await refresh_models(registry, store)
        # what add_embedding uses of an AppContext (whose other fields are not this test's business)
        yield SimpleNamespace(config=config, store=store, registry=registry,
                              engine=Engine(config=config, registry=registry))
    finally:
        await store.close()


@pytest.fixture(scope="module")
def tokenizer():
    from generation.architectures import sd_clip_tokenizer

    return sd_clip_tokenizer()


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_nothing_left(app, before: list[str], scratch) -> None:
    assert listing(app.config.embeddings_dir) == before  # no new file, no temporary one
    assert list(scratch.iterdir()) == []  # the folder the upload was read in is gone too


# ------------------------------------------------------------------------------------------- values


def test_real_looking_values_pass():
    check_embedding_values(vectors(3))
    check_embedding_values(vectors(2, scale=MAX_EMBEDDING_NORM * 0.99))
    check_embedding_values(vectors(2).half())
    check_embedding_values(vectors(1, 2048, scale=3.0))  # SDXL: clip_l + clip_g side by side


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused(bad):
    tensor = vectors(2)
    tensor[1, 5] = bad
    with pytest.raises(EmbeddingError, match=r"NaN or infinite values \(1 of 64\)"):
        check_embedding_values(tensor)
    with pytest.raises(EmbeddingError, match="NaN or infinite"):
        check_embedding_values(tensor.half())


def test_huge_norms_are_refused():
    with pytest.raises(EmbeddingError, match=r"vector 2 of the embedding has length 26"):
        check_embedding_values(torch.cat([vectors(1), vectors(1, scale=26.0)]))
    # values an fp16 text encoder would overflow on; their norm is computed without overflowing
    with pytest.raises(EmbeddingError, match="real embeddings stay below 25"):
        check_embedding_values(torch.full((1, EMBEDDING_WIDTH), 60000.0, dtype=torch.float16))


def test_integer_tensors_are_refused():
    with pytest.raises(EmbeddingError, match="floating-point"):
        check_embedding_values(torch.ones(1, EMBEDDING_WIDTH, dtype=torch.int64))


# ------------------------------------------------------------------------------------------- count


def test_count_cap(tmp_path):
    check_embedding_count(tmp_path / "missing")  # no folder yet: nothing to count
    folder = tmp_path / "embeddings"
    folder.mkdir()
    for index in range(MAX_UPLOADED_EMBEDDINGS - 1):
        (folder / f"e{index}.{('safetensors', 'pt', 'bin')[index % 3]}").touch()
    (folder / "notes.txt").touch()
    (folder / "sub.safetensors").mkdir()  # not a file
    check_embedding_count(folder)
    (folder / "last.SAFETENSORS").touch()
    with pytest.raises(EmbeddingError, match=rf"already {MAX_UPLOADED_EMBEDDINGS} embeddings here \(at most "
                                             rf"{MAX_UPLOADED_EMBEDDINGS}\); remove one"):
        check_embedding_count(folder)


async def test_an_upload_past_the_cap_is_refused(app, scratch_tmp):
    folder = app.config.embeddings_dir
    for index in range(MAX_UPLOADED_EMBEDDINGS - len(listing(folder))):
        (folder / f"filler{index}.safetensors").touch()
    before = listing(folder)
    with pytest.raises(EmbeddingError, match="remove one before adding another"):
        await add_embedding(app, filename="newstyle.safetensors", data=upload(vectors()))
    assert_nothing_left(app, before, scratch_tmp)


# ------------------------------------------------------------------------------------------- trigger


@pytest.mark.parametrize("trigger", ["the", "The", "cat", "junk", "x", "1", "style"])
def test_ordinary_words_are_refused_as_triggers(trigger, tokenizer):
    with pytest.raises(EmbeddingError, match=rf'the trigger "{trigger}" is an ordinary word; rename the file '
                                             rf"to something unique like {trigger.lower()}-style.safetensors"):
        check_trigger_is_unique(trigger, tokenizer)


@pytest.mark.parametrize("trigger", ["newstyle", "my-style", "easel_v2", "a1111st", "thestyle"])
def test_unique_triggers_pass(trigger, tokenizer):
    check_trigger_is_unique(trigger, tokenizer)


async def test_the_is_refused_and_nothing_is_written(app, scratch_tmp):
    before = listing(app.config.embeddings_dir)
    with pytest.raises(EmbeddingError, match='the trigger "the" is an ordinary word; rename the file to something '
                                             "unique like the-style.safetensors"):
        await add_embedding(app, filename="the.safetensors", data=upload(vectors()))
    assert_nothing_left(app, before, scratch_tmp)
    assert app.registry.embedding("the") is None


# ------------------------------------------------------------------------------------------- uploads


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.index_fill_(1, torch.tensor([3]), float("nan")), "NaN or infinite values"),
    (lambda t: t.index_fill_(1, torch.tensor([0]), float("inf")), "NaN or infinite values"),
    (lambda t: t.mul_(1000), "has length 400; real embeddings stay below 25"),
])
async def test_bad_values_are_refused_and_nothing_is_left(app, scratch_tmp, change, message):
    before = listing(app.config.embeddings_dir)
    with pytest.raises(EmbeddingError, match=message):
        await add_embedding(app, filename="newstyle.safetensors", data=upload(change(vectors(2))))
    assert_nothing_left(app, before, scratch_tmp)
    assert app.registry.embedding("newstyle") is None


async def test_a_good_upload_is_saved_loaded_and_changes_the_image(app, scratch_tmp):
    folder = app.config.embeddings_dir
    before = listing(folder)
    data = upload(vectors(2, scale=3.0))
    added = await add_embedding(app, filename="newstyle.safetensors", data=data)
    assert (added.trigger, added.vectors, added.width) == ("newstyle", 2, EMBEDDING_WIDTH)
    assert listing(folder) == sorted([*before, "newstyle.safetensors"])  # no temporary file beside it
    assert (folder / "newstyle.safetensors").read_bytes() == data
    assert list(scratch_tmp.iterdir()) == []
    info = app.registry.embedding("newstyle")
    assert info is not None and info.usable and info.vectors == 2
    stored = {e.trigger: e for e in await app.store.embeddings.list()}
    assert stored["newstyle"].status == "loaded"
    plain = app.engine.generate(tiny_request(prompt="a red cat", seed=5))[0]
    used = app.engine.generate(tiny_request(prompt="a red cat newstyle", seed=5))[0]
    assert plain.image.tobytes() != used.image.tobytes()
    assert "newstyle" in used.infotext
    with pytest.raises(EmbeddingError, match="already exists"):  # and it is there to stay
        await add_embedding(app, filename="newstyle.safetensors", data=upload(vectors()))
    assert (folder / "newstyle.safetensors").read_bytes() == data


# ------------------------------------------------------------------------------------------- writing


def test_an_existing_file_is_never_replaced(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "raced.safetensors").write_bytes(b"the original")  # appeared after the name was checked
    with pytest.raises(EmbeddingError, match="an embedding named raced already exists"):
        model_admin._write_new(folder, "raced", b"the upload")
    assert (folder / "raced.safetensors").read_bytes() == b"the original"
    assert listing(folder) == ["raced.safetensors"]


def test_written_under_a_temporary_name_then_linked(tmp_path, monkeypatch):
    folder = tmp_path / "embeddings"
    seen = []
    real_link = os.link

    def link(source, target):
        seen.append((os.path.basename(source), os.path.getsize(source)))
        return real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    path = model_admin._write_new(folder, "fresh", b"0123456789")  # the folder is made when missing
    assert path == folder / "fresh.safetensors" and path.read_bytes() == b"0123456789"
    [(name, size)] = seen
    assert name.startswith(".fresh.") and name.endswith(".upload") and size == 10  # complete before it appears
    assert listing(folder) == ["fresh.safetensors"]


def test_without_hard_links_it_renames_but_still_never_replaces(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    folder = tmp_path / "embeddings"
    model_admin._write_new(folder, "fresh", b"new")
    assert listing(folder) == ["fresh.safetensors"] and (folder / "fresh.safetensors").read_bytes() == b"new"
    with pytest.raises(EmbeddingError, match="already exists"):
        model_admin._write_new(folder, "fresh", b"other")
    assert listing(folder) == ["fresh.safetensors"] and (folder / "fresh.safetensors").read_bytes() == b"new"


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_fsync(descriptor):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    folder = tmp_path / "embeddings"
    with pytest.raises(OSError, match="disk on fire"):
        model_admin._write_new(folder, "fresh", b"data")
    assert listing(folder) == []
