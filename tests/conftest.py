from __future__ import annotations

import pytest

from controller.engine import Engine
from tests.machines import SESSION_LABEL, AgentBox, ensure_base_image


@pytest.fixture(scope="session")
def engine() -> Engine:
    eng = Engine()
    ensure_base_image(eng)
    yield eng
    for row in eng.containers(SESSION_LABEL):
        eng.remove_container(row["Id"])


@pytest.fixture(scope="session")
def box(engine: Engine) -> AgentBox:
    """One container shared by the module tests (each test uses its own paths)."""
    machine = AgentBox(engine).start()
    yield machine
    machine.stop()
