"""ffnn: when you make a feed-forward network bigger, does it actually get better?

The small public API; the modules say the rest (``ffnn.train.train`` trains one model).
"""

from .data import Dataset, load
from .models import REGISTRY, ModelSpec, build_model, count_params
from .train import TrainConfig

__all__ = ["Dataset", "load", "REGISTRY", "ModelSpec", "build_model", "count_params", "TrainConfig"]
__version__ = "0.1.0"
