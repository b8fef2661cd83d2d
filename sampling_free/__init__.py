"""sampling-free: object detectors trained without sampling heuristics.

``Detector`` and ``train`` (``sampling_free/api.py``), ``convert`` and ``estimate_prior``
(``sampling_free/conversion.py``) load on first use, so ``import sampling_free`` and the command line do not import
torch before they need it."""

__all__ = ["Detector", "train", "convert", "estimate_prior"]
_HOME = {"Detector": "api", "train": "api", "convert": "conversion", "estimate_prior": "conversion"}


def __getattr__(name: str):
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'sampling_free' has no attribute {name!r}")
