"""Data sets for jbp: small ones embedded in the package, loaders for the standard ones.

Every loader returns numpy arrays as ``((x_train, y_train), (x_test, y_test))`` with a
fixed, documented, seed-deterministic split. Runtime dependencies: numpy only.

Embedded (offline, in the wheel): :func:`digits`, :func:`ames`, :func:`rotten_tomatoes`
(with :class:`Vocabulary` to turn texts into padded id arrays).
Read from files / downloaded into a cache (``cache_dir=``, ``$JBP_DATA_DIR`` or
``~/.cache/jbp``) with checksums: :func:`mnist`, :func:`fashion_mnist`, :func:`cifar10`.
"""

from .ames import AMES_FEATURES, AmesData, ames
from .cifar import CIFAR10_CLASSES, cifar10
from .digits import digits, load_digits_raw
from .idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    fashion_mnist,
    mnist,
    prepare_images,
    read_idx,
)
from .sentiment import load_rotten_tomatoes_raw, rotten_tomatoes
from .split import one_hot
from .text import Vocabulary, tokenize

__all__ = [
    "digits",
    "load_digits_raw",
    "one_hot",
    "mnist",
    "fashion_mnist",
    "read_idx",
    "prepare_images",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "cifar10",
    "CIFAR10_CLASSES",
    "ames",
    "AmesData",
    "AMES_FEATURES",
    "rotten_tomatoes",
    "load_rotten_tomatoes_raw",
    "Vocabulary",
    "tokenize",
]
