"""Extensions: more quantities from the same hand-written backward (BackPACK, in JAX).

Pass them to :func:`jbp.backprop`; each result is ``Pass.extras[name]``, a pytree with the
structure of ``params``. ``gᵢ`` is the gradient of the loss on example ``i`` alone and ``n``
the batch size:

================================  ====================  ===================================
extension                         ``extras`` key        leaves
================================  ====================  ===================================
``BatchGrad()``                   ``"batch_grad"``      ``(n, *leaf.shape)``: row i = ``gᵢ``
``BatchL2()``                     ``"batch_l2"``        ``(n,)``: ``‖gᵢ‖²`` on that leaf
``SumGradSquared()``              ``"sum_grad_squared"`` ``leaf.shape``: ``Σᵢ gᵢ ⊙ gᵢ``
``Variance()``                    ``"variance"``        ``leaf.shape``: ``(1/n) Σᵢ (gᵢ − ḡ)²``
``ClippedGrad(max_norm)``         ``"clipped_grad"``    ``leaf.shape``: ``(1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ``
================================  ====================  ===================================

Curvature (:mod:`jbp.extensions.curvature`): ``DiagGGN``, ``DiagGGNMC``, ``BatchDiagGGN``,
``DiagHessian``, ``KFLR``, ``KFAC``.

Write your own by subclassing :class:`Extension` (see its docstring).
"""

from jbp.extensions.base import Extension, generic_batch_grad
from jbp.extensions.curvature import (
    KFAC,
    KFLR,
    BatchDiagGGN,
    DiagGGN,
    DiagGGNMC,
    DiagHessian,
    KronFactors,
)
from jbp.extensions.firstorder import (
    BatchGrad,
    BatchL2,
    ClippedGrad,
    SumGradSquared,
    Variance,
    global_sq_norms,
)

__all__ = [
    "Extension",
    "BatchGrad",
    "BatchL2",
    "SumGradSquared",
    "Variance",
    "ClippedGrad",
    "generic_batch_grad",
    "global_sq_norms",
    "DiagGGN",
    "DiagGGNMC",
    "BatchDiagGGN",
    "DiagHessian",
    "KFLR",
    "KFAC",
    "KronFactors",
]
