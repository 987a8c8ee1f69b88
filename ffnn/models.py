"""Declarative model specs -> ``nn.Sequential``.

A model is a list of hidden widths and one activation (karpathy/micrograd's
``[nin] + nouts``): ``sizes = [784, *hidden, 10]``, the activation after every
hidden layer and none after the last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError

N_INPUTS = 784  # 28 x 28 pixels
N_CLASSES = 10

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


class SpecError(UserError, ValueError):
    """A model spec that cannot be built."""


@dataclass(frozen=True)
class ModelSpec:
    hidden: tuple[int, ...] = ()  # hidden-layer widths; () is logistic regression
    activation: str = "none"  # one of ACTIVATIONS, or "none" when there is no hidden layer

    def __post_init__(self) -> None:
        for w in self.hidden:
            if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
                raise SpecError(f"hidden width must be a positive integer, got {w!r}")
        if self.hidden and self.activation not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")
        if not self.hidden and self.activation not in ("none", *ACTIVATIONS):
            raise SpecError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")

    @property
    def sizes(self) -> list[int]:
        return [N_INPUTS, *self.hidden, N_CLASSES]

    @property
    def hidden_str(self) -> str:
        """``"100,100"``; empty for logistic regression (the MLflow param format)."""
        return ",".join(map(str, self.hidden))

    @property
    def activation_name(self) -> str:
        return self.activation if self.hidden else "none"

    def describe(self) -> str:
        """``"784-100-100-10 relu"``"""
        return "-".join(map(str, self.sizes)) + (f" {self.activation}" if self.hidden else "")


# The tutorial's six models, exactly.
REGISTRY: dict[str, ModelSpec] = {
    "LR": ModelSpec((), "none"),
    "A": ModelSpec((100,), "sigmoid"),
    "B": ModelSpec((100,), "tanh"),
    "C": ModelSpec((100,), "relu"),
    "D": ModelSpec((100, 100), "relu"),
    "E": ModelSpec((100, 100, 100), "relu"),
}


def parse_hidden(text: str) -> tuple[int, ...]:
    """``parse_hidden("100,100") == (100, 100)``; ``parse_hidden("") == ()``."""
    if not text.strip():
        return ()
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise SpecError(f"hidden widths must be integers, got {text!r}") from None


def build_model(spec: ModelSpec) -> nn.Sequential:
    """Linear layers initialised as ``nn.Linear`` does; seed torch before calling."""
    sizes = spec.sizes
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[spec.activation]())
    return nn.Sequential(*layers)


def count_params(model: nn.Module | ModelSpec) -> int:
    if isinstance(model, ModelSpec):
        sizes = model.sizes
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return sum(p.numel() for p in model.parameters())


def seeded_model(spec: ModelSpec, seed: int, device: torch.device | str = "cpu") -> nn.Sequential:
    torch.manual_seed(seed)
    return build_model(spec).to(device)
