import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "config" / "tiny.yaml"
BASE = ROOT / "config" / "config.yaml"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def tiny_cfg():
    from teddy import config

    return config.load([BASE, TINY])
