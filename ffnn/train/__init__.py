"""Training: the reference loop (``loop``: one seed, autograd), the stacked trainer (``stacked``: S seeds in
one pass, the same contract), and the work a training process does for compare (``jobs``) and tune
(``trials``). Nothing here knows a tracker or Optuna."""

from .loop import (
    DEFAULT_RULE,
    Diverged,
    DivergenceRule,
    SeedResult,
    TrainConfig,
    device_name,
    evaluate,
    resolve_device,
    train,
)

__all__ = ["DEFAULT_RULE", "Diverged", "DivergenceRule", "SeedResult", "TrainConfig", "device_name", "evaluate",
           "resolve_device", "train"]
