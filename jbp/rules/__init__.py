"""Alternative learning rules: swappable backward passes, and how well they align with backprop.

Every rule keeps the forward pass and the parameter gradients' form ``aᵀδ``; what changes is
the delta ``δ`` each layer receives.

- **Per-layer rules** — a field of the weight layers (``Dense``, ``Conv2D``, ``SimpleRNN``,
  ``LSTM``): ``rule="bp"`` (default), ``"fa"`` (feedback alignment, Lillicrap et al. 2016),
  ``"sign"`` (uniform sign symmetry, Liao et al. 2016), ``"kolen_pollack"`` (Akrout et al.
  2019). The feedback matrix ``B`` replaces ``W`` in ``∂L/∂a = δ Wᵀ`` (details and the
  initialisation of ``B`` in :mod:`jbp.layers._feedback`). :func:`with_rule` gives a copy of
  a model with a rule on its weight layers (distinct feedback seeds); :func:`as_backprop`
  the copy with every rule back to ``"bp"``.
- **Direct feedback alignment** (Nøkland 2016) is model-level: :func:`dfa` wraps a
  ``Sequential`` in a :class:`DFA` layer whose hidden weight layers receive ``B_l e``.
- **Alignment metrics**: the engine extension :class:`Alignment`
  (``jbp.backprop(..., extensions=[Alignment()])`` → ``Pass.extras["alignment"]``, computed
  from the same forward pass plus backprop's deltas below the first layer that differs,
  and a Gram form for wide ``Dense`` layers), its reader :func:`alignment` (jit-able: per layer, the angle between the
  rule's weight gradient and backprop's, the angle between ``B`` and ``W`` and ``‖B‖/‖W‖``),
  :class:`AlignmentHistory` (a ``jbp.fit`` callback recording them every epoch) and
  :func:`plot_alignment`.

Everything else — ``fit``, ``make_train_step``, ``evaluate``, per-example gradients,
``Dropout``, ``BatchNorm`` state, ``jit``/``scan`` — works unchanged: a rule is just another
``backward``. ``check_gradients`` compares against ``jax.grad`` and so *reports* a non-bp rule
as a mismatch, by design: prove the forward and the parameter gradients on
``as_backprop(model)``.
"""

from jbp.layers._feedback import RULES
from jbp.rules.alignment import (
    QUANTITIES,
    Alignment,
    AlignmentHistory,
    AlignmentRecord,
    alignment,
    plot_alignment,
)
from jbp.rules.convert import RULE_LAYERS, as_backprop, with_rule
from jbp.rules.dfa import DFA, dfa

__all__ = [
    "RULES",
    "RULE_LAYERS",
    "with_rule",
    "as_backprop",
    "DFA",
    "dfa",
    "Alignment",
    "alignment",
    "AlignmentHistory",
    "AlignmentRecord",
    "QUANTITIES",
    "plot_alignment",
]
