"""batchfind: find the batch size to train with on this machine.

    from batchfind import load_config, probe
    report = probe(load_config("configs/cnn-small.yaml", {"--memory-limit": "2GiB"}))
    print(report.recommendation.batch_size)
"""

__version__ = "0.1.0"

__all__ = ["InputError", "Report", "StoppedByInput", "check", "load_config", "probe"]


def __getattr__(name: str):
    # Imported on first use: `batchfind --help` must stay fast and never import torch.
    if name == "load_config":
        from .config import load_config

        return load_config
    if name in ("probe", "check"):
        from . import probing

        return getattr(probing, name)
    if name in ("InputError", "StoppedByInput"):
        from . import errors

        return getattr(errors, name)
    if name == "Report":
        from .report import Report

        return Report
    raise AttributeError(f"module 'batchfind' has no attribute {name!r}")
