"""Layers: each a frozen dataclass with ``init``, ``forward`` and ``backward``.

Forward and backward of each layer sit side by side in its module, with the equations in
the docstring: ``dense``, ``activations``, ``reshape`` (Flatten), ``dropout``, ``conv``,
``pooling``, ``normalization`` (BatchNorm with non-trainable state, LayerNorm),
``embedding``, ``masking`` (padded sequences), ``recurrent`` (SimpleRNN, LSTM),
``attention`` (MultiHeadAttention, transformer_block), ``positional``, ``residual``
(Residual, PositionWise).
"""

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
from jbp.layers.attention import MultiHeadAttention, transformer_block
from jbp.layers.conv import Conv2D
from jbp.layers.dense import Dense
from jbp.layers.dropout import Dropout
from jbp.layers.embedding import Embedding
from jbp.layers.masking import Masked, Masking, MeanPool1D
from jbp.layers.normalization import BatchNorm, LayerNorm
from jbp.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from jbp.layers.positional import PositionalEmbedding
from jbp.layers.recurrent import LSTM, SimpleRNN
from jbp.layers.reshape import Flatten
from jbp.layers.residual import PositionWise, Residual

__all__ = [
    "Layer",
    "Sequential",
    "Dense",
    "Flatten",
    "Dropout",
    "Activation",
    "Identity",
    "Sigmoid",
    "Tanh",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softplus",
    "GELU",
    "Softmax",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "BatchNorm",
    "LayerNorm",
    "Embedding",
    "Masked",
    "Masking",
    "MeanPool1D",
    "SimpleRNN",
    "LSTM",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "Residual",
    "PositionWise",
    "transformer_block",
]
