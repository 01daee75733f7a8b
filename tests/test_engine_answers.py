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
