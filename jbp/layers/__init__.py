"""Layers: each a frozen dataclass with ``init``, ``forward`` and ``backward``."""
from jbp.core import Layer, Sequential
from jbp.layers.activations import (
    ELU,
    GELU,
    Activation,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from jbp.layers.dense import Dense
from jbp.layers.reshape import Flatten

__all__ = [
    "Layer", "Sequential", "Dense", "Flatten", "Activation", "Identity", "Sigmoid", "Tanh",
    "ReLU", "LeakyReLU", "ELU", "Softplus", "GELU", "Softmax",
]
