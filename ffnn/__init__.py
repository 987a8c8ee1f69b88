"""ffnn: when you make a feed-forward network bigger, does it actually get better?"""

from .data import Dataset, load
from .models import REGISTRY, ModelSpec, build_model, count_params
from .train import TrainConfig, train

__all__ = ["Dataset", "load", "REGISTRY", "ModelSpec", "build_model", "count_params", "TrainConfig", "train"]
__version__ = "0.1.0"
