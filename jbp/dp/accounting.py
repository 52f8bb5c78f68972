r"""Privacy accounting for DP-SGD: Rényi DP of the Poisson-subsampled Gaussian mechanism.

One DP-SGD step draws a batch by *Poisson sampling* (each of the ``N`` examples joins
independently with probability ``q = sample_rate``), clips every per-example gradient to
L2 norm ``C`` and adds ``N(0, (σ C)² I)`` to their sum; ``σ = noise_multiplier``.
Neighbouring datasets differ by adding or removing one example (the sensitivity of the
clipped sum is ``C``). This module bounds the privacy of ``steps`` such steps.

Rényi DP of one step (Mironov, Talwar & Zhang 2019)
----------------------------------------------------
With ``μ0 = N(0, σ²)``, ``μ1 = N(1, σ²)`` and ``μ = (1 − q) μ0 + q μ1``, one step is
``(α, R(α))``-RDP for every order ``α > 1`` with

    R(α) = log(A_α) / (α − 1),        A_α = E_{z∼μ0}[(μ(z) / μ0(z))^α].

*Integer* α (binomial expansion):

    A_α = Σ_{i=0}^{α} C(α, i) (1 − q)^{α−i} q^i exp((i² − i) / (2σ²)).

Since the binomial weights sum to one and the i = 0, 1 terms have exponent 0, this is
computed as ``log A_α = log1p(Σ_{i≥2} C(α,i) (1−q)^{α−i} q^i expm1((i²−i)/(2σ²)))`` in log
space, the same sum written so that a tiny R(α) (small q, large σ) keeps its full relative
precision.

*Fractional* α (Sec. 3.3 of the paper): with ``z0 = σ² log(1/q − 1) + 1/2``, the point
where ``q μ1 = (1 − q) μ0``, ``A_α = A_0 + A_1`` with the generalised binomial series

    A_0 = Σ_{i≥0} C(α,i) q^i (1−q)^{α−i} exp((i² − i)/(2σ²)) · ½ erfc((i − z0)/(√2 σ)),
    A_1 = Σ_{i≥0} C(α,i) q^{α−i} (1−q)^i exp((j² − j)/(2σ²)) · ½ erfc((z0 − j)/(√2 σ)),
          j = α − i.

For i > α the coefficients C(α, i) alternate in sign. As Google's ``dp_accounting`` does
today (``rdp_privacy_accountant._compute_log_a_frac``, the successor of TensorFlow
Privacy's ``rdp_accountant``), the *absolute values* of the terms are added in log space.
This upper-bounds A_α, so it is a valid RDP bound, and it cannot cancel catastrophically;
it is conservative by the size of the negative terms: 3 % of R(1.5) at q = 0.01, σ = 2.5
(TensorFlow Privacy's old signed sum gave 0.00065 for 50 steps, this gives 0.00067), 10 %
of R(1.25) at q = 0.01, σ = 4, up to 16× at α = 1.25 for q = 0.2, σ = 10. Such orders are
then far from the optimum: against exact RDP values (numerical integration) ε moved by
less than 0.2 % in every DP-SGD setting we checked. Integer orders are exact.

The series stops, exactly as in ``dp_accounting``, at the first i ≥ 1 where the i-th terms
``s0_i`` of A_0 and ``s1_i`` of A_1 both decrease and ``max(s0_i, s1_i) < e^{−30}·(sum so
far)``. An order whose series has not stopped after 1000 terms gets ``R(α) = inf``: a true,
vacuous bound, which the minimum over orders ignores. This happens at small fractional
orders when q is large and σ small (e.g. α ≤ 1.8 for q = 0.5, σ = 1).

Special cases: ``q = 1`` (no subsampling) is the plain Gaussian mechanism,
``R(α) = α / (2σ²)``; ``σ = 0`` gives ``R = inf`` (no privacy); ``steps = 0`` gives 0.
Composition over ``steps`` adaptive steps adds RDP: ``R_total(α) = steps · R(α)``.

From RDP to (ε, δ)
------------------
``conversion="balle2020"`` (default): Balle, Barthe, Gaboardi, Hsu & Sato 2020, Thm 21
(the same bound is Prop. 12 of Canonne, Kamath & Steinke 2020, which ``dp_accounting``
cites, and Eq. 20 of Asoodeh et al. 2020):

    ε = min_α [ R_total(α) + log1p(−1/α) − (log δ + log α) / (α − 1) ],

and ε = 0 at an order where ``R_total(α) < −log(1 − δ²)`` (then ``KL ≤ R_total(α)`` and
``TV ≤ sqrt(1 − e^{−KL}) < δ``, as in ``dp_accounting.compute_epsilon``). It is never
larger than the classic bound, and is what current Opacus and ``dp_accounting`` report.
Unlike ``dp_accounting``, which skips orders ``α ≤ 1.01``, the formula is applied at
every order > 1 (it is valid there, and log α/(α − 1) is computed stably); with the
default orders the two agree.

``conversion="classic"``: Mironov 2017, Prop. 3,
``ε = min_α [R_total(α) + log(1/δ)/(α − 1)]``, what TensorFlow Privacy's
``get_privacy_spent`` and papers of the Abadi et al. era report; use it to reproduce their
numbers.

Negative values are clipped to 0. The minimum is taken over a grid of orders
(:data:`DEFAULT_ORDERS`, ``dp_accounting``'s default ``RdpAccountant`` grid: ``1 + x/10``
for x = 1..99, then 11..63, 128, 256, 512, 1024). A finer or wider grid can only lower ε;
if :func:`rdp_to_epsilon` reports the optimum at the grid's smallest or largest order,
widen the grid.

How to read ε
-------------
``(ε, δ)``-DP means: for any two datasets D, D' that differ by one example and any set S
of outcomes (every released model, every intermediate iterate),
``P[M(D) ∈ S] ≤ e^ε P[M(D') ∈ S] + δ``.
Equivalently, any membership-inference test has true-positive rate at most
``e^ε · (false-positive rate) + δ``. Pick δ well below ``1/N``; ε ≈ 1 is a strong
guarantee, single-digit ε is common for DP deep learning. ε is an *upper bound* (the
true privacy loss may be smaller), and it holds for the mechanism as analysed: Poisson
sampling with rate ``q`` and noise ``σ·C`` on the sum of clipped gradients. Training on
shuffled fixed-size batches is common practice but is a different sampling scheme that
this bound does not strictly cover.

References:
    I. Mironov, K. Talwar, L. Zhang. Rényi Differential Privacy of the Sampled Gaussian
    Mechanism. arXiv:1908.10530, 2019.
    I. Mironov. Rényi Differential Privacy. CSF 2017, arXiv:1702.07476.
    B. Balle, G. Barthe, M. Gaboardi, J. Hsu, T. Sato. Hypothesis Testing Interpretations
    and Rényi Differential Privacy. AISTATS 2020, arXiv:1905.09982.
    C. Canonne, G. Kamath, T. Steinke. The Discrete Gaussian for Differential Privacy.
    NeurIPS 2020, arXiv:2004.00010.
    S. Asoodeh, J. Liao, F. Calmon, O. Kosut, L. Sankar. A Better Bound Gives a Hundred
    Rounds: Enhanced Privacy Guarantees via f-Divergences. ISIT 2020, arXiv:2001.05990.
    M. Abadi et al. Deep Learning with Differential Privacy. CCS 2016, arXiv:1607.00133.

The module uses numpy and the standard library's ``math`` only (no jax, no scipy); the
fractional series is evaluated for all fractional orders at once, in chunks of 64 terms.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_ORDERS",
    "CONVERSIONS",
    "rdp",
    "rdp_to_epsilon",
    "epsilon",
    "noise_multiplier_for",
]

#: dp_accounting's default RDP orders (``RdpAccountant.__init__``, version 0.6.0).
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)]
    + [128.0, 256.0, 512.0, 1024.0]
)

#: The accepted values of ``conversion``.
CONVERSIONS: tuple[str, ...] = ("balle2020", "classic")

_MAX_FRAC_TERMS = 1000  # dp_accounting's _MAX_STEPS_LOG_A_FRAC
_FRAC_CHUNK = 64  # fractional-series terms evaluated per vectorised batch

# ---------------------------------------------------------------------------------------
# Validation (once, at the boundary, on concrete Python / numpy values)
# ---------------------------------------------------------------------------------------


def _is_real_scalar(value) -> bool:
    """A Python/numpy real number, or a 0-d real array (numpy or jax); never a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return getattr(value, "shape", None) == () and kind in ("i", "u", "f")


def _real(
    where: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False
) -> float:
    """``value`` as a finite float inside the interval, else TypeError / ValueError."""
    if not _is_real_scalar(value):
        raise TypeError(
            f"{where}: {name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    v = float(value)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be a finite number in {interval}, got {value!r}")
    bad = False
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"{where}: {name} must be in {interval}, got {value!r}")
    return v


def _steps(where: str, value) -> int:
    """``value`` as a non-negative int (Python, numpy or 0-d integer array; not bool)."""
    if isinstance(value, (bool, np.bool_)):
        is_int = False
    elif isinstance(value, numbers.Integral):
        is_int = True
    else:
        kind = getattr(getattr(value, "dtype", None), "kind", None)
        is_int = getattr(value, "shape", None) == () and kind in ("i", "u")
    if not is_int:
        raise TypeError(
            f"{where}: steps must be a non-negative int, got {value!r} "
            f"of type {type(value).__name__}"
        )
    v = int(value)
    if v < 0:
        raise ValueError(f"{where}: steps must be a non-negative int, got {v}")
    return v


def _orders(where: str, orders) -> np.ndarray:
    if orders is None:
        return np.asarray(DEFAULT_ORDERS, dtype=np.float64)
    if isinstance(orders, (str, bytes)):
        raise TypeError(
            f"{where}: orders must be a 1-D sequence of real numbers > 1, got {orders!r}"
        )
    try:
        arr = np.asarray(orders)
    except Exception as e:  # noqa: BLE001 - ragged or odd objects
        raise TypeError(
            f"{where}: orders must be a 1-D sequence of real numbers > 1, got {orders!r}"
        ) from e
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(
            f"{where}: orders must be a 1-D sequence of real numbers > 1, "
            f"got dtype {arr.dtype}: {orders!r}"
        )
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{where}: orders must be a non-empty 1-D sequence, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | (arr <= 1.0)
    if bad.any():
        raise ValueError(
            f"{where}: every order must be a finite number > 1, got {arr[bad].tolist()} in orders"
        )
    return arr


def _conversion(where: str, conversion) -> str:
    if not isinstance(conversion, str) or conversion not in CONVERSIONS:
        raise ValueError(f"{where}: conversion must be one of {CONVERSIONS}, got {conversion!r}")
    return conversion


def _rdp_array(where: str, rdp_values, n: int) -> np.ndarray:
    try:
        arr = np.asarray(rdp_values, dtype=np.float64)
    except Exception as e:  # noqa: BLE001
        raise TypeError(
            f"{where}: rdp_values must be a 1-D sequence of numbers, got {rdp_values!r}"
        ) from e
    if arr.shape != (n,):
        raise ValueError(f"{where}: rdp_values must have shape ({n},) like orders, got {arr.shape}")
    if np.isnan(arr).any() or (arr < 0).any():
        raise ValueError(
            f"{where}: rdp_values must be >= 0 (inf allowed), got "
            f"{arr[np.isnan(arr) | (arr < 0)].tolist()}"
        )
    return arr


# ---------------------------------------------------------------------------------------
# Log-space helpers
# ---------------------------------------------------------------------------------------

_lgamma = np.frompyfunc(math.lgamma, 1, 1)
_erfc = np.frompyfunc(math.erfc, 1, 1)
_LOG_SQRT_PI = 0.5 * math.log(math.pi)
_LOG_2 = math.log(2.0)
_ERFC_ASYMPTOTIC_FROM = 20.0


def _logsumexp(x: np.ndarray) -> float:
    """``log Σ e^{x_k}`` as ``m + log1p(Σ_{k≠argmax} e^{x_k − m})``: when the sum is close
    to its largest term (log A_α ≈ 0 for a tiny RDP) the small terms keep their precision."""
    x = np.asarray(x, dtype=np.float64).ravel()
    k = int(np.argmax(x))
    m = float(x[k])
    if m == -math.inf or m == math.inf:
        return m
    rest = np.delete(x, k)
    return m + math.log1p(float(np.sum(np.exp(rest - m))))


_LOG_FACTORIALS = np.array([math.lgamma(k + 1.0) for k in range(1025)])  # log k!, k <= 1024


def _log_factorials(n: int) -> np.ndarray:
    """``log k!`` for ``k = 0 .. n`` (``math.lgamma``; a table up to the largest default
    order, computed afresh beyond it)."""
    if n < _LOG_FACTORIALS.size:
        return _LOG_FACTORIALS[: n + 1]
    return np.array([math.lgamma(k + 1.0) for k in range(n + 1)])


def _log_comb(n, k: np.ndarray) -> np.ndarray:
    """``log |C(n, k)|`` for integers ``0 <= k`` (generalised binomial coefficient for a
    real ``n``; ``lgamma`` is ``log |Γ|``). ``n`` and ``k`` broadcast against each other.
    """
    n = np.asarray(n, dtype=np.float64)
    log_fact_k = _log_factorials(int(np.max(k)))[k.astype(np.int64)]
    return (
        np.asarray(_lgamma(n + 1.0), dtype=np.float64)
        - log_fact_k
        - np.asarray(_lgamma(n - k + 1.0), dtype=np.float64)
    )


def _log_expm1(x: np.ndarray) -> np.ndarray:
    """``log(exp(x) − 1)`` for ``x > 0``, stable for tiny and huge x."""
    out = np.empty_like(x)
    small = x < 1.0
    out[small] = np.log(np.expm1(x[small]))
    big = ~small
    out[big] = x[big] + np.log1p(-np.exp(-x[big]))
    return out


def _log_half_erfc(x: np.ndarray) -> np.ndarray:
    """``log(½ erfc(x))`` elementwise (the Gaussian tail ``log P[Z > √2 x]``), accurate
    both where ``½ erfc`` is close to 1 and where ``erfc`` underflows.

    x < 0: ``log1p(−½ erfc(−x))``; 0 ≤ x < 20: ``log(math.erfc(x)) − log 2`` (relative
    accuracy ~1e-15); x ≥ 20: the asymptotic series
    ``erfc(x) = e^{−x²}/(x√π) · Σ_k (−1)^k (2k−1)!!/(2x²)^k`` (eight terms: the first omitted
    one is below 1e-20 at x = 20).
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    neg = x < 0.0
    if neg.any():
        out[neg] = np.log1p(-0.5 * _erfc(-x[neg]).astype(np.float64))
    small = (x >= 0.0) & (x < _ERFC_ASYMPTOTIC_FROM)
    if small.any():
        out[small] = np.log(_erfc(x[small]).astype(np.float64)) - _LOG_2
    big = x >= _ERFC_ASYMPTOTIC_FROM
    if big.any():
        xb = x[big]
        u = 1.0 / (2.0 * xb * xb)
        series = np.zeros_like(xb)
        term = np.ones_like(xb)
        for k in range(1, 9):
            term = -term * (2 * k - 1) * u
            series += term
        out[big] = -xb * xb - np.log(xb) - _LOG_SQRT_PI - _LOG_2 + np.log1p(series)
    return out


# ---------------------------------------------------------------------------------------
# log A_α of the sampled Gaussian mechanism, 0 < q < 1, σ > 0
# ---------------------------------------------------------------------------------------


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """``log A_α`` for integer ``α ≥ 2`` as ``log1p(Σ_{i≥2} pmf_i · expm1(c i(i−1)))``."""
    i = np.arange(2, alpha + 1)
    log_fact = _log_factorials(alpha)
    log_comb = log_fact[alpha] - log_fact[i] - log_fact[alpha - i]
    i = i.astype(np.float64)
    log_pmf = log_comb + i * math.log(q) + (alpha - i) * math.log1p(-q)
    log_terms = log_pmf + _log_expm1(i * (i - 1.0) / (2.0 * sigma * sigma))
    log_s = _logsumexp(log_terms)  # log(A_α − 1)
    # log(1 + e^{log_s}), stable on both sides of 0.
    if log_s > 0.0:
        return log_s + math.log1p(math.exp(-log_s))
    return math.log1p(math.exp(log_s))


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """``log A_α`` for fractional orders ``alphas`` (Mironov et al. 2019, Sec. 3.3; see the
    module doc), all orders at once: row r of each chunk holds terms i of order ``alphas[r]``.
    """
    n = alphas.size
    out = np.full(n, math.inf)  # stays inf where the series does not stop
    z0 = sigma * sigma * math.log(1.0 / q - 1.0) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    two_var = 2.0 * sigma * sigma
    scale = math.sqrt(2.0) * sigma
    all0 = np.full((n, _MAX_FRAC_TERMS), -math.inf)  # every term, for the final precise sum
    all1 = np.full((n, _MAX_FRAC_TERMS), -math.inf)
    active = np.arange(n)  # orders still summing
    running = np.full(n, -math.inf)  # log of the sum of all terms so far
    last0 = np.full(n, -math.inf)
    last1 = np.full(n, -math.inf)
    for start in range(0, _MAX_FRAC_TERMS, _FRAC_CHUNK):
        stop = min(start + _FRAC_CHUNK, _MAX_FRAC_TERMS)
        i = np.arange(start, stop, dtype=np.float64)[None, :]
        a = alphas[active][:, None]
        j = a - i
        log_coef = _log_comb(a, i)
        s0 = (
            log_coef
            + i * log_q
            + j * log_1mq
            + (i * i - i) / two_var
            + _log_half_erfc((i - z0) / scale)
        )
        s1 = (
            log_coef
            + j * log_q
            + i * log_1mq
            + (j * j - j) / two_var
            + _log_half_erfc((z0 - j) / scale)
        )
        all0[active, start:stop] = s0
        all1[active, start:stop] = s1
        # Running log-sum after each term (log-cumsum-exp), for the stopping rule only.
        pair = np.logaddexp(s0, s1)
        m = np.maximum(running[active], pair.max(axis=1))
        m = np.where(np.isfinite(m), m, 0.0)[:, None]
        with np.errstate(divide="ignore"):
            totals = m + np.log(
                np.exp(running[active][:, None] - m) + np.cumsum(np.exp(pair - m), axis=1)
            )
        prev0 = np.concatenate((last0[active][:, None], s0[:, :-1]), axis=1)
        prev1 = np.concatenate((last1[active][:, None], s1[:, :-1]), axis=1)
        done = (s0 < prev0) & (s1 < prev1) & (np.maximum(s0, s1) < totals - 30.0)
        finished = done.any(axis=1)
        for r in np.flatnonzero(finished):
            row, end = active[r], start + int(np.argmax(done[r])) + 1  # terms 0 .. end-1
            out[row] = _logsumexp(np.concatenate((all0[row, :end], all1[row, :end])))
        running[active] = totals[:, -1]
        last0[active], last1[active] = s0[:, -1], s1[:, -1]
        active = active[~finished]
        if active.size == 0:
            break
    return out


def _rdp_one_step(q: float, sigma: float, orders: np.ndarray) -> np.ndarray:
    """RDP of one step at every order (inputs already validated)."""
    if sigma == 0.0:
        return np.full(orders.shape, math.inf)
    if q == 1.0:
        return orders / (2.0 * sigma * sigma)
    log_a = np.empty(orders.shape)
    integer = orders == np.floor(orders)
    for k in np.flatnonzero(integer):
        log_a[k] = _log_a_int(q, sigma, int(orders[k]))
    if not integer.all():
        log_a[~integer] = _log_a_frac(q, sigma, orders[~integer])
    return log_a / (orders - 1.0)


def _epsilons(
    rdp_total: np.ndarray, orders: np.ndarray, delta: float, conversion: str
) -> np.ndarray:
    """ε at every order (before the minimum), clipped at 0; inf where RDP is inf."""
    log_delta = math.log(delta)
    am1 = orders - 1.0
    with np.errstate(invalid="ignore"):
        if conversion == "classic":
            eps = rdp_total - log_delta / am1
        else:
            # log α / (α − 1) as log1p(α − 1)/(α − 1): stable as α → 1.
            eps = rdp_total + np.log1p(-1.0 / orders) - (log_delta + np.log1p(am1)) / am1
            eps = np.where(rdp_total < -math.log1p(-delta * delta), 0.0, eps)
    eps = np.where(np.isinf(rdp_total), math.inf, eps)
    return np.maximum(eps, 0.0)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def rdp(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    orders: Sequence[float] | None = None,
) -> np.ndarray:
    """Rényi DP of ``steps`` Poisson-subsampled Gaussian steps, at every order.

    Args:
        noise_multiplier: σ ≥ 0, the noise standard deviation divided by the L2
            sensitivity (the clipping norm). σ = 0 gives ``inf``.
        sample_rate: q ∈ (0, 1], the Poisson sampling probability of each example
            (expected batch size / dataset size). q = 1 is the unsampled Gaussian.
        steps: int ≥ 0, the number of composed steps.
        orders: 1-D sequence of finite orders α > 1; ``None`` uses :data:`DEFAULT_ORDERS`.

    Returns:
        A float64 array, shape ``(len(orders),)``: ``steps · R(α)`` (``inf`` where the
        fractional series did not converge, or σ = 0).

    Raises:
        TypeError, ValueError: naming the argument that is out of range.
    """
    where = "rdp"
    sigma = _real(where, "noise_multiplier", noise_multiplier, low=0.0)
    q = _real(where, "sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
    n = _steps(where, steps)
    alphas = _orders(where, orders)
    return _rdp_total(q, sigma, n, alphas)


def _rdp_total(q: float, sigma: float, steps: int, orders: np.ndarray) -> np.ndarray:
    if steps == 0:
        return np.zeros(orders.shape)
    return steps * _rdp_one_step(q, sigma, orders)


def rdp_to_epsilon(
    rdp_values: Sequence[float] | np.ndarray,
    orders: Sequence[float] | np.ndarray | None,
    delta: float,
    *,
    conversion: str = "balle2020",
) -> tuple[float, float]:
    """Convert an RDP curve (e.g. a sum of :func:`rdp` curves) to ``(ε, best order)``.

    Args:
        rdp_values: 1-D RDP values ≥ 0 (``inf`` allowed), one per order.
        orders: the orders they were computed at (finite, > 1); ``None`` means
            :data:`DEFAULT_ORDERS`.
        delta: δ ∈ (0, 1).
        conversion: ``"balle2020"`` (default, tighter) or ``"classic"``; see the module
            docstring.

    Returns:
        ``(epsilon, order)``: the smallest ε over the orders (``inf`` if every order is
        ``inf``) and the order that attains it. An order at the grid's edge means a wider
        grid may give a smaller ε.

    Raises:
        TypeError, ValueError: naming the argument that is out of range.
    """
    where = "rdp_to_epsilon"
    alphas = _orders(where, orders)
    values = _rdp_array(where, rdp_values, alphas.size)
    d = _real(where, "delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    conv = _conversion(where, conversion)
    eps = _epsilons(values, alphas, d, conv)
    k = int(np.argmin(eps))
    return float(eps[k]), float(alphas[k])


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    orders: Sequence[float] | None = None,
    conversion: str = "balle2020",
) -> float:
    """ε of ``steps`` DP-SGD steps (Poisson rate q, noise multiplier σ) at a given δ.

    Args:
        noise_multiplier: σ ≥ 0 (noise std / clipping norm). σ = 0 gives ``inf``
            (unless ``steps == 0``).
        sample_rate: q ∈ (0, 1] (expected batch size / dataset size).
        steps: int ≥ 0, the number of noisy updates; 0 gives ε = 0.
        delta: δ ∈ (0, 1).
        orders: RDP orders to minimise over; ``None`` uses :data:`DEFAULT_ORDERS`.
        conversion: ``"balle2020"`` (default; Balle et al. 2020, as Opacus and
            dp_accounting) or ``"classic"`` (Mironov 2017; TensorFlow Privacy's
            ``get_privacy_spent``, to reproduce older papers).

    Returns:
        ε ≥ 0 as a Python float (``inf`` when no order gives a finite bound).

    Raises:
        TypeError, ValueError: naming the argument that is out of range.
    """
    where = "epsilon"
    sigma = _real(where, "noise_multiplier", noise_multiplier, low=0.0)
    q = _real(where, "sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
    n = _steps(where, steps)
    d = _real(where, "delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    alphas = _orders(where, orders)
    conv = _conversion(where, conversion)
    return _epsilon(sigma, q, n, d, alphas, conv)


def _epsilon(sigma, q, steps, delta, orders, conversion) -> float:
    if steps == 0:
        return 0.0
    return float(np.min(_epsilons(_rdp_total(q, sigma, steps, orders), orders, delta, conversion)))


def noise_multiplier_for(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    orders: Sequence[float] | None = None,
    conversion: str = "balle2020",
    rtol: float = 1e-6,
    max_noise_multiplier: float = 1e6,
) -> float:
    """The smallest noise multiplier σ whose :func:`epsilon` is at most ``target_epsilon``.

    The search brackets the answer (doubling or halving σ from 1), then bisects until
    ``hi − lo ≤ rtol · hi`` with ``ε(lo) > target ≥ ε(hi)``, and returns ``hi``: the result
    always meets the target, and, ε being non-increasing in σ, no σ smaller by more than
    ``rtol`` (relative) does. (Monotonicity holds exactly at integer orders and was checked,
    not proven, for the fractional-order series; the returned σ meets the target regardless.)

    Args:
        target_epsilon: ε > 0 to reach.
        sample_rate: q ∈ (0, 1].
        steps: int ≥ 0; 0 returns 0.0 (nothing is released, no noise is needed).
        delta: δ ∈ (0, 1).
        orders: RDP orders; ``None`` uses :data:`DEFAULT_ORDERS`.
        conversion: ``"balle2020"`` or ``"classic"``, as in :func:`epsilon`.
        rtol: relative tolerance on σ, in (0, 0.5).
        max_noise_multiplier: the largest σ searched (> 0).

    Returns:
        σ as a Python float.

    Raises:
        ValueError: if even ``max_noise_multiplier`` does not reach the target (with the
            classic conversion ε cannot fall below ``log(1/δ)/(max order − 1)``), or an
            argument is out of range (named).
        TypeError: an argument of the wrong type (named).
    """
    where = "noise_multiplier_for"
    target = _real(where, "target_epsilon", target_epsilon, low=0.0, low_open=True)
    q = _real(where, "sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
    n = _steps(where, steps)
    d = _real(where, "delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    alphas = _orders(where, orders)
    conv = _conversion(where, conversion)
    tol = _real(where, "rtol", rtol, low=0.0, high=0.5, low_open=True, high_open=True)
    cap = _real(where, "max_noise_multiplier", max_noise_multiplier, low=0.0, low_open=True)
    if n == 0:
        return 0.0

    def meets(sigma: float) -> bool:
        return _epsilon(sigma, q, n, d, alphas, conv) <= target

    if not meets(cap):
        eps_cap = _epsilon(cap, q, n, d, alphas, conv)
        raise ValueError(
            f"{where}: target_epsilon={target!r} is unreachable: even "
            f"max_noise_multiplier={cap!r} gives epsilon={eps_cap!r} (sample_rate={q!r}, "
            f"steps={n}, delta={d!r}, conversion={conv!r}, largest order "
            f"{float(alphas.max())!r}); raise target_epsilon or max_noise_multiplier, or use "
            f"larger orders"
        )
    # Bracket: ε(lo) > target >= ε(hi); σ = 0 always fails (ε = inf for steps > 0).
    lo, hi = 0.0, min(1.0, cap)
    if meets(hi):
        while hi > 1e-8:
            cand = 0.5 * hi
            if meets(cand):
                hi = cand
            else:
                lo = cand
                break
    else:
        while True:  # ends: meets(cap) holds
            lo, hi = hi, min(2.0 * hi, cap)
            if meets(hi):
                break
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return float(hi)
