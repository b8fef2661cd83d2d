"""sampling-free: object detectors trained without sampling heuristics.

``Detector`` and ``train`` (``sampling_free/api.py``) load on first use, so ``import sampling_free`` and the
command line do not import torch before they need it."""

__all__ = ["Detector", "train"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sampling_free' has no attribute {name!r}")
