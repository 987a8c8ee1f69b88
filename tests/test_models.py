import pytest
import torch
from torch import nn

from ffnn.models import REGISTRY, ModelSpec, SpecError, build_model, count_params, parse_hidden, seeded_model


def test_registry_has_the_tutorials_models_exactly():
    assert {
        "LR": ModelSpec((), "none"),
        "A": ModelSpec((100,), "sigmoid"),
        "B": ModelSpec((100,), "tanh"),
        "C": ModelSpec((100,), "relu"),
        "D": ModelSpec((100, 100), "relu"),
        "E": ModelSpec((100, 100, 100), "relu"),
    } == REGISTRY


@pytest.mark.parametrize("name, n_params", [
    ("LR", 784 * 10 + 10),
    ("A", 79_510), ("B", 79_510), ("C", 79_510),
    ("D", 79_510 + 100 * 100 + 100),
    ("E", 79_510 + 2 * (100 * 100 + 100)),
])
def test_build_model_parameter_counts(name, n_params):
    model = build_model(REGISTRY[name])
    assert count_params(model) == n_params == count_params(REGISTRY[name])


def test_build_model_layer_shapes_and_activations():
    model = build_model(REGISTRY["D"])
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == \
        [(784, 100), (100, 100), (100, 10)]
    assert [type(m) for m in build_model(REGISTRY["A"])] == [nn.Linear, nn.Sigmoid, nn.Linear]
    assert [type(m) for m in build_model(REGISTRY["LR"])] == [nn.Linear]


def test_seeded_model_initialises_as_nn_linear_does():
    torch.manual_seed(7)
    ref1, ref2 = nn.Linear(784, 100), nn.Linear(100, 10)
    model = seeded_model(REGISTRY["C"], 7)
    assert torch.equal(model[0].weight, ref1.weight) and torch.equal(model[0].bias, ref1.bias)
    assert torch.equal(model[2].weight, ref2.weight) and torch.equal(model[2].bias, ref2.bias)


@pytest.mark.parametrize("hidden, activation", [((0,), "relu"), ((-5,), "relu"), ((1.5,), "relu"),
                                                ((100,), "swish")])
def test_model_spec_rejects_bad_input(hidden, activation):
    with pytest.raises(SpecError):
        ModelSpec(hidden, activation)


def test_parse_hidden_round_trips_the_param_format():
    assert parse_hidden("100,100") == (100, 100)
    assert parse_hidden("") == ()
    assert ModelSpec((100, 50), "relu").hidden_str == "100,50"
    with pytest.raises(SpecError):
        parse_hidden("100,x")
