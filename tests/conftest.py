from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from kiln.controller.engine import Engine, image_prefix
from tests.machines import SESSION, SESSION_LABEL, AgentBox, ensure_base_image

# Set at import, so every `invoke` a test starts inherits them: test bakes tag, retire and move
# `latest` in a namespace of this session only, and reserve versions in a directory of their own.
os.environ.setdefault("KILN_IMAGE_PREFIX", f"localhost/kiln-test-{SESSION}")
if not os.environ.get("KILN_STATE_DIR"):
    os.environ["KILN_STATE_DIR"] = tempfile.mkdtemp(prefix=f"kiln-test-state-{SESSION}-")
    _OWN_STATE_DIR = os.environ["KILN_STATE_DIR"]
else:
    _OWN_STATE_DIR = ""


@pytest.fixture(scope="session")
def engine() -> Engine:
    eng = Engine()
    ensure_base_image(eng)
    yield eng
    for row in eng.containers(SESSION_LABEL):
        eng.remove_container(row["Id"])
    remove_session_images(eng)
    if _OWN_STATE_DIR:
        shutil.rmtree(_OWN_STATE_DIR, ignore_errors=True)


def remove_session_images(eng: Engine) -> None:
    """Only images under this session's own prefix (never a user's `localhost/kiln/*`)."""
    prefix = image_prefix()
    if not prefix.startswith("localhost/kiln-test-"):
        return  # a prefix set from outside is someone else's namespace
    for row in eng.images(f"{prefix}/*"):
        eng.remove_image(row["Id"])


@pytest.fixture(scope="session")
def box(engine: Engine) -> AgentBox:
    """One container shared by the module tests (each test uses its own paths)."""
    machine = AgentBox(engine).start()
    yield machine
    machine.stop()
