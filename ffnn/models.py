"""Declarative model specs -> ``nn.Sequential``.

A model is a list of hidden widths and one activation (karpathy/micrograd's
``[nin] + nouts``): ``sizes = [n_inputs, *hidden, n_classes]``, the activation after
every hidden layer and none after the last. The input and output sizes are the
data's: a spec is bound to a dataset with ``sized`` (MNIST's 784 and 10 until then,
so the tutorial's registry reads as the tutorial wrote it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .errors import UserError

MNIST_INPUTS = 784  # 28 x 28 pixels: a spec's input size until it is bound to a dataset (``ModelSpec.sized``)
MNIST_CLASSES = 10

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
    n_inputs: int = MNIST_INPUTS  # features per example: the dataset's (``sized``)
    n_classes: int = MNIST_CLASSES  # outputs, one per class: the dataset's (``sized``)

    def __post_init__(self) -> None:
        for name, n in (("n_inputs", self.n_inputs), ("n_classes", self.n_classes)):
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise SpecError(f"{name} must be a positive integer, got {n!r}")
        for w in self.hidden:
            if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
                raise SpecError(f"hidden width must be a positive integer, got {w!r}")
        if self.hidden and self.activation not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")
        if not self.hidden and self.activation not in ("none", *ACTIVATIONS):
            raise SpecError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")

    @property
    def sizes(self) -> list[int]:
        return [self.n_inputs, *self.hidden, self.n_classes]

    def sized(self, n_inputs: int, n_classes: int) -> ModelSpec:
        """The same architecture for data of ``n_inputs`` features and ``n_classes`` classes.

        ``REGISTRY["C"].sized(64, 10).describe() == "64-100-10 relu"``
        """
        return replace(self, n_inputs=n_inputs, n_classes=n_classes)

    @property
    def hidden_str(self) -> str:
        """``"100,100"``; empty for logistic regression (the MLflow param format)."""
        return ",".join(map(str, self.hidden))

    @property
    def activation_name(self) -> str:
        return self.activation if self.hidden else "none"

    def describe(self) -> str:
        """``"784-100-100-10 relu"``: the sizes, so the input and class counts too (``parse_describe`` reads it)"""
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


def tuned_name(family: str, study: int = 1) -> str:
    """The model ``tune --final`` retrains from study ``study`` of ``family``: ``C*``, then ``C*s2``, ``C*s3``
    (like the studies ``tune-C``, ``tune-C-s2``: study 1's name is the one from before replicate studies)."""
    return f"{family}*" + (f"s{study}" if study > 1 else "")


def parse_tuned(name: str) -> tuple[str, int] | None:
    """(family, study) of a tuned model's name; None for an untuned one.

    ``parse_tuned("C*") == ("C", 1)``; ``parse_tuned("C*s3") == ("C", 3)``; ``parse_tuned("C") is None``
    """
    base, star, rest = name.rpartition("*")
    if not star or not base:
        return None
    if not rest:
        return base, 1
    return (base, int(rest[1:])) if rest[0] == "s" and rest[1:].isdigit() and int(rest[1:]) > 1 else None


def parse_hidden(text: str) -> tuple[int, ...]:
    """``parse_hidden("100,100") == (100, 100)``; ``parse_hidden("") == ()``."""
    if not text.strip():
        return ()
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise SpecError(f"hidden widths must be integers, got {text!r}") from None


def parse_describe(text: str) -> tuple[int, int] | None:
    """The input and class counts of a ``describe()`` text; None if it is not one.

    ``parse_describe("64-100-10 relu") == (64, 10)``; ``parse_describe("5-3") == (5, 3)``
    """
    sizes = text.split(" ", 1)[0].split("-")
    if len(sizes) < 2 or not all(s.isdigit() and int(s) > 0 for s in sizes):
        return None
    return int(sizes[0]), int(sizes[-1])


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
