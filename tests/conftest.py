import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

TESTS = Path(__file__).parent
ROOT = TESTS.parent
# Worker processes import `fixtures:...` factories from here.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(TESTS))

# No per-example deadline anywhere: on a loaded machine one slow example would fail a test that
# checks no timing at all.
settings.register_profile("batchfind", deadline=None)
settings.load_profile("batchfind")


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


@pytest.fixture(scope="session")
def worker_data_bytes(tmp_path_factory) -> int:
    """The data segment (what a memory cap counts) of a worker that ran a tiny model, in bytes.

    Measured once per test run: memory caps in tests sit this far above it, because the torch build
    decides it (a CUDA build adds ~400 MiB to every process, GPU or not)."""
    from batchfind import check, load_config

    folder = tmp_path_factory.mktemp("baseline")
    meter = folder / "vmdata.txt"
    config = folder / "meter.yaml"
    config.write_text(
        f"model: {{name: 'fixtures:DataMeter', kwargs: {{out: '{meter}'}}}}\n"
        "data: {kind: synthetic, size: 64, input_shape: [8], num_classes: 4}\n"
        "probe: {warmup_steps: 1, steps: 2, device: cpu}\n"
    )
    trial = check(load_config(config), 1).trials[0]
    assert trial.fits, trial.error
    return max(int(v) for v in meter.read_text().split())
