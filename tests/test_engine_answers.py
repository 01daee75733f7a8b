"""An engine that cannot answer is not an engine that says "no such image"."""

from __future__ import annotations

import pytest

from kiln.controller.engine import Engine, EngineError, image_prefix

pytestmark = pytest.mark.slow


def test_a_missing_image_is_missing(engine):
    assert engine.image_exists(f"{image_prefix()}/never-made:{'x' * 8}") is False


def test_an_image_that_exists_exists(engine):
    from kiln.controller.engine import BASE_IMAGE

    assert engine.image_exists(BASE_IMAGE) is True


def test_an_engine_failure_is_an_error_not_a_missing_image(tmp_path, monkeypatch):
    """A storage error (here: storage podman cannot use) must not read as "missing": the local
    provider would build a new base image over the one that is there."""
    broken = tmp_path / "not-a-dir"
    broken.write_text("")
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{broken}"\nrunroot = "{tmp_path / "run"}"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    with pytest.raises(EngineError, match="could not say whether image"):
        Engine().image_exists("localhost/kiln-base/debian:bookworm")


@pytest.mark.parametrize("size", [1000, 30000, 60000])
def test_files_copy_into_a_running_container_whatever_their_size(engine, size):
    """`podman cp -` into a running container stops reading at the archive's end: a tar padded to its
    10 KiB record failed with "read/write on closed pipe" (a 30 kB bundle in the differential harness)."""
    import uuid

    from kiln.controller.engine import BASE_IMAGE, _ulimit_args, tar_of

    name = f"kiln-tar-{uuid.uuid4().hex[:8]}"
    engine.run("create", "--name", name, *_ulimit_args(), BASE_IMAGE, "sleep", "120")
    try:
        engine.start(name)
        engine.run("cp", "-", f"{name}:/", input=tar_of({"/srv/tar/blob": (b"x" * size, 0o644)}))
        assert engine.exec(name, "stat", "-c", "%s", "/srv/tar/blob").strip() == str(size)
    finally:
        engine.remove_container(name)


def test_untagging_one_name_leaves_the_images_other_names(engine):
    """`podman untag NAME` alone removes every name of the image NAME resolves to: untagging a test's extra
    tag on kiln's base image took the base's own name with it (the next bake built the base again)."""
    import uuid

    from kiln.controller.engine import tar_of

    repo = f"{image_prefix()}/untag-{uuid.uuid4().hex[:8]}"
    kept, extra = f"{repo}:kept", f"{repo}:extra"
    engine.run("import", "-", kept, input=tar_of({"/etc/kiln-untag": (b"x", 0o644)}))
    try:
        engine.tag(kept, extra)
        engine.untag(extra)
        assert engine.image_exists(extra) is False
        assert engine.image_exists(kept) is True, "untag took the image's other name too"
    finally:
        engine.remove_image(kept)
        engine.remove_image(extra)
