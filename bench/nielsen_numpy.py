"""A faithful NumPy port of Nielsen's ``network.py`` (NNDL, ch. 1), for bench/peers.py.

The original's structure is kept on purpose — it is the baseline a reader of the book
runs: examples are ``(x, y)`` tuples of column vectors ``(784, 1)``/``(10, 1)``;
``update_mini_batch`` loops over the examples of a minibatch in Python and calls
``backprop`` once per example (per-example forward and backward with matrix-vector
products), summing the gradients into ``nabla_b``/``nabla_w`` lists; the weights then take
``w ← w − (η/m) Σ ∇w``. ``SGD`` shuffles the list of examples every epoch. The cost is the
quadratic ``C = 1/(2m) Σ ‖y − a‖²`` (``cost_derivative = a − y``).

Changes from the original: Python 3; the parameters are handed in (so every contender
starts from the same numbers) instead of drawn with ``np.random.randn``; the
accumulators are ``np.zeros`` of the parameter's dtype (the original's ``np.zeros`` is
float64, as are its ``randn`` parameters: pass float64 parameters to be exactly that);
``SGD`` can stop after ``n_batches`` minibatches (to time a fraction of an epoch) and
does no evaluation; :meth:`Network.cost` is added to check the numbers.
"""

from __future__ import annotations

import random

import numpy as np


class Network:
    """Nielsen's ``Network`` with given parameters.

    Args:
      weights: ``[W¹, W²]`` with ``Wˡ`` of shape ``(out, in)`` (Nielsen's layout).
      biases: ``[b¹, b²]`` column vectors ``(out, 1)``.
    """

    def __init__(self, weights, biases):
        self.num_layers = len(weights) + 1
        self.weights = [np.array(w) for w in weights]
        self.biases = [np.array(b) for b in biases]

    def feedforward(self, a):
        """Return the output of the network if ``a`` is input."""
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def SGD(self, training_data, epochs, mini_batch_size, eta, n_batches=None):
        """Mini-batch stochastic gradient descent, as in the book; ``n_batches`` (not in
        the original) stops each epoch after that many minibatches."""
        n = len(training_data)
        for _ in range(epochs):
            random.shuffle(training_data)
            mini_batches = [
                training_data[k : k + mini_batch_size] for k in range(0, n, mini_batch_size)
            ]
            for mini_batch in mini_batches[:n_batches]:
                self.update_mini_batch(mini_batch, eta)

    def update_mini_batch(self, mini_batch, eta):
        """One gradient-descent step on a minibatch: backprop per example, summed."""
        nabla_b = [np.zeros(b.shape, b.dtype) for b in self.biases]
        nabla_w = [np.zeros(w.shape, w.dtype) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]

    def backprop(self, x, y):
        """``(nabla_b, nabla_w)``: the gradient of the cost of the single example ``(x, y)``."""
        nabla_b = [np.zeros(b.shape, b.dtype) for b in self.biases]
        nabla_w = [np.zeros(w.shape, w.dtype) for w in self.weights]
        # feedforward
        activation = x
        activations = [x]  # list to store all the activations, layer by layer
        zs = []  # list to store all the z vectors, layer by layer
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        # backward pass
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            z = zs[-l]
            sp = sigmoid_prime(z)
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)

    def cost_derivative(self, output_activations, y):
        """∂C_x/∂a for the output activations."""
        return output_activations - y

    def cost(self, data):
        """``1/(2m) Σ ‖y − a‖²`` over ``data`` (not in the original; for checking)."""
        return sum(0.5 * float(np.sum((self.feedforward(x) - y) ** 2)) for x, y in data) / len(data)


def sigmoid(z):
    """The sigmoid function."""
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    """Derivative of the sigmoid function."""
    return sigmoid(z) * (1 - sigmoid(z))


def as_training_data(x, y):
    """Rows ``x (n, 784)``, ``y (n, 10)`` as the book's list of column-vector tuples
    (what ``mnist_loader.load_data_wrapper`` returns)."""
    return [(xi.reshape(-1, 1), yi.reshape(-1, 1)) for xi, yi in zip(x, y)]
