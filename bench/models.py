"""The networks the benchmarks share, built in one place.

``cnn()``: the small CNN of bench/layers.py, conv16-pool-conv32-pool-dense on 28x28x1 images
(3x3 SAME convolutions, 2x2 max pools, ReLU, 10 outputs), used by bench/layers.py,
bench/dp.py, bench/curvature.py, bench/peers.py, bench/scaling.py and bench/fit_cnn.py.
"""

from __future__ import annotations

import jbp
from jbp.layers import Dense, Flatten, ReLU
from jbp.layers.conv import Conv2D
from jbp.layers.pooling import MaxPool2D


def cnn() -> jbp.Sequential:
    """conv16-pool-conv32-pool-dense (``Conv2D(16, 3)``, ``ReLU``, ``MaxPool2D(2)``, twice with
    32 filters the second time, then ``Flatten`` and ``Dense(10)``)."""
    return jbp.Sequential(
        [
            Conv2D(16, 3),
            ReLU(),
            MaxPool2D(2),
            Conv2D(32, 3),
            ReLU(),
            MaxPool2D(2),
            Flatten(),
            Dense(10),
        ]
    )
