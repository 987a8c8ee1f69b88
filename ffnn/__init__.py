"""ffnn: when you make a feed-forward network bigger, does it actually get better?

The small public API; the modules say the rest (``ffnn.train.train`` trains one model).
Names are imported on first use, so that ``import ffnn.engine`` (a training process's
first import) does not pull in torch before the process is bound to its parent.
"""

import importlib

_API = {"Dataset": "data", "load": "data", "REGISTRY": "models", "ModelSpec": "models",
        "build_model": "models", "count_params": "models", "TrainConfig": "train"}

__all__ = list(_API)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
