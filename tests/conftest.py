import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
# Worker processes import `fixtures:...` factories from here.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(TESTS))


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config into tmp_path and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# A tiny model that probes in a second or two on CPU.
TINY = """
model: {name: mlp, in_features: 16, hidden: 32, layers: 1, classes: 4}
data: {kind: synthetic, size: 64}
probe: {warmup_steps: 1, steps: 2, device: cpu}
"""
