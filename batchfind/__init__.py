"""batchfind: find the batch size to train with on this machine."""

__version__ = "0.1.0"
