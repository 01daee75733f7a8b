from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from kiln.controller.engine import Engine, image_prefix
from tests.ansible_diff import Differentials
from tests.machines import SESSION, SESSION_LABEL, AgentBox, ensure_base_image

# Set at import, so every `invoke` a test starts inherits them: test bakes tag, retire and move
# `latest` in a namespace of this session only, and reserve versions in a directory of their own.
os.environ.setdefault("KILN_IMAGE_PREFIX", f"localhost/kiln-test-{SESSION}")
if not os.environ.get("KILN_STATE_DIR"):
    os.environ["KILN_STATE_DIR"] = tempfile.mkdtemp(prefix=f"kiln-test-state-{SESSION}-")
    _OWN_STATE_DIR = os.environ["KILN_STATE_DIR"]
else:
    _OWN_STATE_DIR = ""
# kiln's cache (the agent zipapp, its byte code, compiled roles) of this session, not the user's ~/.cache
if not os.environ.get("KILN_CACHE_DIR"):
    os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"kiln-test-cache-{SESSION}-")
    _OWN_CACHE_DIR = os.environ["KILN_CACHE_DIR"]
else:
    _OWN_CACHE_DIR = ""


@pytest.fixture(scope="session", autouse=True)
def own_directories():
    """The session's state and cache directories go with it, whichever tests ran."""
    yield
    for directory in (_OWN_STATE_DIR, _OWN_CACHE_DIR):
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def engine() -> Engine:
    eng = Engine()
    ensure_base_image(eng)
    yield eng
    for row in eng.containers(SESSION_LABEL):
        eng.remove_container(row["Id"])
    remove_session_images(eng)


def remove_session_images(eng: Engine) -> None:
    """Only images under this session's own prefix (never a user's `localhost/kiln/*`)."""
    prefix = image_prefix()
    if not prefix.startswith("localhost/kiln-test-"):
        return  # a prefix set from outside is someone else's namespace
    for row in eng.images(f"{prefix}/*"):
        eng.remove_image(row["Id"])


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "differential(group): asserts on a group's ansible-playbook/kiln comparison (tests/ansible_diff.py)",
    )


@pytest.fixture(scope="session")
def differentials(engine: Engine, request) -> Differentials:
    """group -> its Comparison; the groups of every selected test are compared together, on first demand."""
    wanted: dict[str, None] = {}
    for item in request.session.items:
        for mark in item.iter_markers("differential"):
            wanted[mark.args[0]] = None
    return Differentials(engine, list(wanted))


@pytest.fixture(scope="session")
def box(engine: Engine) -> AgentBox:
    """One container shared by the module tests (each test uses its own paths)."""
    machine = AgentBox(engine).start()
    yield machine
    machine.stop()


@pytest.fixture(scope="module")
def moto_url():
    """A moto server over HTTP on 127.0.0.1 for one test module, with AWS's NotFound validations on."""
    import logging

    from moto.server import ThreadedMotoServer

    from kiln.controller.sandbox import sandbox_client

    saved = {k: os.environ.get(k) for k in ("MOTO_ENABLE_AMI_VALIDATION", "MOTO_ENABLE_KEYPAIR_VALIDATION")}
    os.environ.update(MOTO_ENABLE_AMI_VALIDATION="true", MOTO_ENABLE_KEYPAIR_VALIDATION="true")
    logging.getLogger("werkzeug").disabled = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    sandbox_client("ec2", "us-east-1", url).describe_regions()  # warm up: moto loads its AMIs once
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def sandbox_env(moto_url, engine, monkeypatch):
    """AWS_ENDPOINT_URL at the module's moto server; the sandbox images its AMIs made are removed after."""
    from kiln.controller.sandbox import local_images

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    before = {row["Id"] for row in engine.images(local_images())}
    yield moto_url
    for row in engine.images(local_images()):  # AMIs of this server outlive the bakes: so do their images
        if row["Id"] not in before:
            engine.run("rmi", "-f", row["Id"], check=False)
