"""The privacy accountant (jbp.dp.accounting) against independent references.

References, each independent of the code under test:

* Published numbers from TensorFlow Privacy (the RDP accountant of Mironov et al.), cited
  at each test: its test suite, its MNIST tutorial README and its command-line docstring.
* A table of values computed with Google's ``dp_accounting`` 0.6.0 (scipy 1.17.1), the
  independent implementation this module follows, hard-coded below. dp-accounting is NOT
  a dependency of this suite; the table was produced once in a scratch environment with
      acc = dp_accounting.rdp.RdpAccountant()          # default orders
      acc.compose(dp_accounting.SelfComposedDpEvent(
          dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
      acc.get_epsilon(delta)
  and ``rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)``.
* Numerical integration (trapezoid rule, numpy only) of the definition
  ``A_α = E_{z∼μ0}[(μ(z)/μ0(z))^α]``, computed here.
* Closed forms: q = 1 is the Gaussian mechanism, ``R(α) = α/(2σ²)``, and the classic
  conversion's continuous optimum ``ε = ρ + 2√(ρ log(1/δ))``.
"""

import math

import numpy as np
import pytest

from jbp import dp
from jbp.dp import accounting

INF = math.inf

# ---------------------------------------------------------------------------------------
# Reference values from dp_accounting 0.6.0 (an independent implementation; see the module
# docstring for how they were produced). Do not regenerate them from jbp.
# ---------------------------------------------------------------------------------------
RDP_ORDERS = [1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.7, 5.0, 8.0, 10.5, 16.0, 32.0, 64.0, 256.0]
RDP_ONE_STEP = {  # (noise_multiplier, sample_rate): one-step R(alpha) at RDP_ORDERS
    (0.5, 0.01): [
        0.001879040862278845,
        0.00220100127799713,
        0.002866369216413766,
        0.003816615689704181,
        0.005345502314345263,
        0.014805221822707555,
        0.0821943779821075,
        1.1111623177774788,
        4.243551221468468,
        10.736948358948984,
        15.910075057592113,
        27.08781846827937,
        59.24627593704455,
        123.32173187455179,
        507.3767703230865,
    ],
    (0.7, 0.001): [
        3.7653011362624333e-06,
        4.261855074827762e-06,
        5.08203187200084e-06,
        5.893513105984334e-06,
        6.696867386303846e-06,
        8.463453244873382e-06,
        1.0262674064637533e-05,
        1.2880489333886112e-05,
        1.826862140917973e-05,
        0.28959291651115143,
        3.0794024991124855,
        8.958258314718012,
        25.522475130056627,
        58.28872026080727,
        254.2896452805481,
    ],
    (0.8, 0.004): [
        3.455089719490897e-05,
        3.8979048666714844e-05,
        4.6236571254875776e-05,
        5.3350299864035454e-05,
        6.032991102580381e-05,
        7.673256000425524e-05,
        9.356945456845929e-05,
        0.00011857072418497104,
        0.00017136429339225165,
        0.0744079656833797,
        2.1005562487735188,
        6.610441705211118,
        19.300427439626066,
        44.390896845346276,
        194.45688629422455,
    ],
    (1.1, 0.004266666666666667): [
        1.3088543713225588e-05,
        1.4831088335005174e-05,
        1.7713252208474904e-05,
        2.056805862119333e-05,
        2.339577600995332e-05,
        2.936054929697007e-05,
        3.536769897204122e-05,
        4.386289535511155e-05,
        5.9902135523495106e-05,
        9.834106177992806e-05,
        0.0001321654114828493,
        0.7918914327818952,
        7.59018834621011,
        20.90274077918983,
        100.30680187454402,
    ],
    (1.3, 0.1): [
        INF,
        INF,
        0.007422168403594678,
        0.007800779531061993,
        0.0080384714867739,
        0.01062936053549969,
        0.013171232359456067,
        0.01747596437603631,
        0.02776459659105502,
        0.10511994031008251,
        0.6036967809502493,
        2.27898806434728,
        7.090593690212284,
        16.595777179879438,
        73.42803013195741,
    ],
    (2.0, 0.05): [
        0.0004820813940286843,
        0.0005296804398421808,
        0.0006001790696797954,
        0.0006600637835347461,
        0.0007098115658749301,
        0.000895345729207864,
        0.0010804847592794581,
        0.0013467879661134552,
        0.0018568074560377282,
        0.0031215266423009493,
        0.004286259936731029,
        0.007347314103178293,
        0.9163696095615746,
        4.9567192096225,
        28.992519756745796,
    ],
    (4.0, 0.01): [
        3.950852349596324e-06,
        4.412571119825559e-06,
        5.141639618328727e-06,
        5.820463264956713e-06,
        6.449425094202615e-06,
        8.06517908526972e-06,
        9.68044856233112e-06,
        1.194468066894459e-05,
        1.6155173151453262e-05,
        2.5899123012412577e-05,
        3.404848416847215e-05,
        5.2072097005807947e-05,
        0.00010526360659077987,
        0.00021520916161849735,
        3.37678223019898,
    ],
    (5.0, 0.0001): [
        2.2483055960167177e-10,
        2.554189435048966e-10,
        3.0636208368754344e-10,
        3.572583490831065e-10,
        4.081077418369779e-10,
        5.101357390777521e-10,
        6.121641449400332e-10,
        7.550046313361018e-10,
        1.0202820149204898e-09,
        1.6324714808426853e-09,
        2.142640975472059e-09,
        3.2650510056372002e-09,
        6.5305342447832336e-09,
        1.3062797891183976e-08,
        5.229274911136683e-08,
    ],
    (10.0, 0.2): [
        0.004455881658361593,
        0.004118892233977205,
        0.0032160281730686524,
        0.001954451142485439,
        0.0004019259003294612,
        0.000627448867707568,
        0.0006038613604689635,
        0.0007560420261498559,
        0.0010096970133442076,
        0.0016234225480381088,
        0.002139488590141441,
        0.0032899840067431687,
        0.006761516138778561,
        0.014331998148967087,
        0.10091432489835928,
    ],
    (1.0, 0.5): [
        INF,
        INF,
        INF,
        INF,
        0.35737401950878855,
        0.5116982957314943,
        0.6968891185980441,
        1.0060217314986029,
        1.657893866440376,
        3.2088792609697943,
        4.483972736824545,
        7.26064333369977,
        15.284493232970414,
        31.29585048324069,
        127.30413459520257,
    ],
    (3.0, 0.9): [
        0.05012576627836287,
        0.0569076792973727,
        0.06822013322342173,
        0.07955660738782652,
        0.09092827114187771,
        0.11420079009882815,
        0.137662490401471,
        0.17084545433226458,
        0.23343013064491402,
        0.3820797562443607,
        0.5097017334281829,
        0.7990694576473987,
        1.6726972161212361,
        3.448625612649553,
        14.116448528071674,
    ],
}
EPSILON = [  # (noise_multiplier, sample_rate, steps, delta, epsilon), RdpAccountant()
    (1.1, 0.004266666666666667, 14063, 1e-05, 2.596655529521983),
    (4.0, 0.01, 10000, 1e-05, 1.0354900660362436),
    (0.8, 0.004, 2000, 1e-06, 2.636966901290978),
    (2.0, 0.05, 500, 1e-05, 2.7685845622392886),
    (10.0, 0.2, 1000, 1e-05, 2.836122685945677),
    (1.0, 0.5, 10, 0.001, 8.554755031219322),
    (0.5, 0.01, 100, 1e-05, 8.034119713902147),
    (3.0, 0.9, 50, 1e-05, 11.673110435581219),
    (5.0, 0.0001, 100000, 1e-07, 0.042777799929132734),
    (1.3, 0.1, 300, 1e-05, 8.606666585604872),
    (0.6, 0.02, 5, 1e-05, 4.232690952619625),
    (8.0, 1.0, 100, 1e-06, 6.734624610068334),
    (0.9, 1.0, 1, 1e-05, 5.339148089906242),
]
INF_ORDERS = {  # default orders whose fractional series stops without converging
    (1.3, 0.1): [1.1, 1.2],
    (1.0, 0.5): [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8],
    (1.0, 0.1): [1.1, 1.2, 1.3, 1.4, 1.5],
}


def test_default_orders_are_dp_accountings_grid():
    # RdpAccountant's DEFAULT_RDP_ORDERS: 1 + x/10 for x in 1..99, 11..63, 128..1024.
    orders = dp.DEFAULT_ORDERS
    assert len(orders) == 99 + 53 + 4
    assert orders[0] == 1.1 and orders[98] == 1 + 99 / 10.0 and orders[99] == 11.0
    assert orders[-5:] == (63.0, 128.0, 256.0, 512.0, 1024.0)
    assert all(a < b for a, b in zip(orders, orders[1:]))


@pytest.mark.parametrize("setting", sorted(RDP_ONE_STEP))
def test_rdp_matches_dp_accounting(setting):
    sigma, q = setting
    expected = np.asarray(RDP_ONE_STEP[setting])
    got = dp.rdp(sigma, q, 1, RDP_ORDERS)
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    fin = np.isfinite(expected)
    # R ~ 1e-10 (q = 1e-4, σ = 5): the sum is 1 + 1e-10 and both codes lose ~1e-9 of it
    # to rounding (dp_accounting's integer orders too; ours are exact there, see the
    # quadrature test); everywhere else they agree to 1e-10.
    rtol = 1e-8 if q < 1e-3 else 1e-10
    np.testing.assert_allclose(got[fin], expected[fin], rtol=rtol, atol=0)


@pytest.mark.parametrize("sigma,q,steps,delta,expected", EPSILON)
def test_epsilon_matches_dp_accounting(sigma, q, steps, delta, expected):
    got = dp.epsilon(sigma, q, steps, delta)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("setting", sorted(INF_ORDERS))
def test_non_converging_fractional_orders_are_inf_like_dp_accounting(setting):
    sigma, q = setting
    r = dp.rdp(sigma, q, 3)
    assert [a for a, x in zip(dp.DEFAULT_ORDERS, r) if np.isinf(x)] == INF_ORDERS[setting]
    assert np.isfinite(dp.epsilon(sigma, q, 3, 1e-5))  # other orders still bound ε


# ---------------------------------------------------------------------------------------
# Published numbers (TensorFlow Privacy, classic conversion, signed fractional series)
# ---------------------------------------------------------------------------------------


def test_tf_privacy_rdp_accountant_test_values():
    # tensorflow/privacy, privacy/analysis/rdp_accountant_test.py:
    # compute_rdp(0.1, 2, 10, 5) = 0.07737 (places=5).
    assert dp.rdp(2.0, 0.1, 10, [5])[0] == pytest.approx(0.07737, abs=5e-6)
    # compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100]) =
    # [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307] (delta=1e-5).
    r = dp.rdp(2.5, 0.01, 50, [1.5, 2.5, 5, 50, 100])
    np.testing.assert_allclose(
        r[1:], [0.001085, 0.00218075, 0.023846, 167.416307], atol=1e-5, rtol=0
    )
    # Order 1.5: that TF Privacy summed the alternating series with signs (the exact A_α);
    # dp_accounting and jbp sum absolute values, a valid upper bound 3 % higher.
    assert 0.00065 <= r[0] <= 0.00065 * 1.04
    # get_privacy_spent(range(2, 33), compute_rdp(0.01, 4, 10000, orders), 1e-5)
    # = (1.258575, order 20): the classic conversion.
    orders = list(range(2, 33))
    eps, order = dp.rdp_to_epsilon(
        dp.rdp(4.0, 0.01, 10000, orders), orders, 1e-5, conversion="classic"
    )
    assert eps == pytest.approx(1.258575, abs=5e-7) and order == 20
    assert dp.epsilon(4.0, 0.01, 10000, 1e-5, orders=orders, conversion="classic") == pytest.approx(
        1.258575, abs=5e-7
    )
    # test_check_composition: two phases, orders below, delta 1e-5 -> (8.509656, 2.5);
    # optimal order fractional, so our (absolute-value) bound is slightly larger.
    orders = (
        1.25,
        1.5,
        1.75,
        2.0,
        2.5,
        3.0,
        4.0,
        5.0,
        6.0,
        7.0,
        8.0,
        10.0,
        12.0,
        14.0,
        16.0,
        20.0,
        24.0,
        28.0,
        32.0,
        64.0,
        256.0,
    )
    total = dp.rdp(0.4, 1e-4, 40000, orders) + dp.rdp(2.0, 0.1, 100, orders)
    eps, order = dp.rdp_to_epsilon(total, orders, 1e-5, conversion="classic")
    assert order == 2.5 and 8.509656 <= eps <= 8.509656 * 1.001


# tensorflow/privacy, tutorials/README.md ("Expected Output" and "Select Parameters"):
# mnist_dpsgd_tutorial.py, N = 60000, batch 256 (q = 256/60000), steps = epochs * (60000 // 256),
# delta = 1e-5, orders [1 + x/10 for x in 1..99] + [12..63], classic conversion, 2 decimals.
MNIST_TUTORIAL = [(1.1, 1, 1.03), (1.1, 2, 1.11), (1.1, 60, 3.01), (1.3, 15, 1.19), (0.7, 45, 7.10)]


@pytest.mark.parametrize("sigma,epochs,published", MNIST_TUTORIAL)
def test_tf_privacy_mnist_tutorial(sigma, epochs, published):
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    eps = dp.epsilon(
        sigma, 256 / 60000, epochs * (60000 // 256), 1e-5, orders=orders, conversion="classic"
    )
    assert round(eps, 2) == published
    # The improved conversion is smaller, as Opacus / dp_accounting report.
    assert dp.epsilon(sigma, 256 / 60000, epochs * (60000 // 256), 1e-5, orders=orders) < eps - 0.05


def test_tf_privacy_compute_dp_sgd_privacy_docstring():
    # tensorflow/privacy, privacy/analysis/compute_dp_sgd_privacy.py: N=60000, batch 256,
    # noise 1.12, 60 epochs, delta 1e-5 -> "(2.92, 1e-5)-DP"; steps = ceil(epochs N / batch).
    orders = (
        [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64)) + [128, 256, 512]
    )
    steps = int(math.ceil(60 * 60000 / 256))
    eps = dp.epsilon(1.12, 256 / 60000, steps, 1e-5, orders=orders, conversion="classic")
    assert round(eps, 2) == 2.92


def test_dp_accounting_gaussian_calibrated_to_one():
    # dp_accounting rdp_privacy_accountant_test.test_compute_epsilon_delta_gaussian: the
    # unsampled Gaussian with σ = 4.530877117 is (1, 1e-6)-DP over orders 1.001..99.999
    # (step 0.001) with the improved conversion (assertAlmostEqual: 7 places).
    orders = [0.001 * i for i in range(1001, 100000)]
    assert dp.epsilon(4.530877117, 1.0, 1, 1e-6, orders=orders) == pytest.approx(1.0, abs=5e-8)


# ---------------------------------------------------------------------------------------
# Numerical integration of the definition, and closed forms
# ---------------------------------------------------------------------------------------


def _log_a_quadrature(q, sigma, alpha, points_per_sigma=20):
    """log A_α by the trapezoid rule, numpy only.

    (μ/μ0)(z) = 1 + q·expm1((2z − 1)/(2σ²)); the integrand is smooth and decays like a
    Gaussian on both sides, so the trapezoid rule converges geometrically (checked against
    60-digit mpmath quadrature to ~1e-12 on these settings while writing this test).
    Large A_α is summed in log space; A_α close to 1 as ∫ μ0·((μ/μ0)^α − 1), which keeps
    A_α − 1 precise.
    """
    lo, hi = -15.0 * sigma, max(alpha, 1.0) + 15.0 * sigma
    z = np.linspace(lo, hi, int((hi - lo) / sigma * points_per_sigma) + 1)
    log_w = np.full_like(z, math.log(z[1] - z[0]))
    log_w[[0, -1]] -= math.log(2.0)
    log_mu0 = -z * z / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi))
    g = alpha * np.log1p(q * np.expm1((2 * z - 1) / (2 * sigma**2)))  # log (μ/μ0)^α
    t = log_mu0 + g + log_w
    log_a = float(t.max() + np.log(np.sum(np.exp(t - t.max()))))
    if log_a > 1.0:
        return log_a
    f = np.empty_like(z)
    neg = g <= 0
    f[neg] = np.exp(log_mu0[neg] + log_w[neg]) * np.expm1(g[neg])
    gp = g[~neg]
    f[~neg] = np.exp(t[~neg] + np.log1p(-np.exp(-gp)))  # μ0·w·(e^g − 1) without overflow
    return math.log1p(f.sum())


QUADRATURE = [
    (0.01, 2.5),
    (0.001, 0.7),
    (0.1, 1.3),
    (0.05, 2.0),
    (0.2, 10.0),
    (0.9, 3.0),
    (256 / 60000, 1.1),
    (0.5, 0.8),
]


@pytest.mark.parametrize("q,sigma", QUADRATURE)
def test_integer_orders_equal_the_integral(q, sigma):
    orders = [2.0, 3.0, 5.0, 12.0, 32.0]
    exact = np.array([_log_a_quadrature(q, sigma, a) / (a - 1) for a in orders])
    np.testing.assert_allclose(dp.rdp(sigma, q, 1, orders), exact, rtol=1e-10, atol=0)


@pytest.mark.parametrize("q,sigma", QUADRATURE)
def test_fractional_orders_bound_the_integral(q, sigma):
    # Summing |terms| of the alternating series (as dp_accounting does) upper-bounds A_α:
    # never below the exact value. The gap is the negative terms' size: a few % at small
    # orders for small q, up to 16x at α = 1.25 for q = 0.2, σ = 10 (there R(1.25) is far
    # from the optimum), within 2 % from α = 3.7 on in every setting here.
    orders = np.array([1.25, 1.5, 2.5, 3.7, 7.5, 10.5])
    exact = np.array([_log_a_quadrature(q, sigma, a) / (a - 1) for a in orders])
    got = dp.rdp(sigma, q, 1, orders)
    fin = np.isfinite(got)
    assert fin[2:].all()
    assert (got[fin] >= exact[fin] * (1 - 1e-10)).all()
    np.testing.assert_allclose(got[orders >= 3.7], exact[orders >= 3.7], rtol=0.02)


def test_no_subsampling_is_the_gaussian_mechanism():
    orders = np.array([1.1, 1.5, 2.0, 7.3, 64.0, 1024.0])
    for sigma, steps in [(0.5, 1), (1.7, 3), (9.0, 1000)]:
        np.testing.assert_allclose(
            dp.rdp(sigma, 1.0, steps, orders), steps * orders / (2 * sigma**2), rtol=1e-15, atol=0
        )


def test_classic_conversion_of_the_gaussian_has_a_closed_form():
    # ε(α) = ρα + L/(α − 1), ρ = T/(2σ²), L = log(1/δ), is minimised at α* = 1 + √(L/ρ)
    # with ε* = ρ + 2√(ρL); a fine grid around α* gets within (Δα)² of it, never below.
    orders = [1 + 0.001 * i for i in range(1, 40000)]
    for sigma, steps, delta in [(3.0, 10, 1e-5), (20.0, 50, 1e-6), (1.5, 1, 1e-3)]:
        rho, big_l = steps / (2 * sigma**2), math.log(1 / delta)
        closed = rho + 2 * math.sqrt(rho * big_l)
        assert 1 + math.sqrt(big_l / rho) < orders[-1]
        eps = dp.epsilon(sigma, 1.0, steps, delta, orders=orders, conversion="classic")
        assert closed <= eps <= closed * (1 + 1e-6)


def test_conversion_formulas_at_one_order():
    # Balle et al. 2020 Thm 21: ε = R + log(1 − 1/α) − (log δ + log α)/(α − 1);
    # Mironov 2017 Prop 3: ε = R + log(1/δ)/(α − 1).
    for r, a, delta in [(0.37, 8.0, 1e-5), (2.5, 1.3, 1e-3), (0.01, 64.0, 1e-7)]:
        balle = r + math.log(1 - 1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        classic = r + math.log(1 / delta) / (a - 1)
        assert dp.rdp_to_epsilon([r], [a], delta)[0] == pytest.approx(balle, rel=1e-14)
        assert dp.rdp_to_epsilon([r], [a], delta, conversion="classic")[0] == pytest.approx(
            classic, rel=1e-14
        )
    # ε = 0 once R < −log(1 − δ²) (then TV ≤ √(1 − e^{−KL}) < δ), as in dp_accounting.
    assert dp.rdp_to_epsilon([0.9e-10], [64.0], 1e-5) == (0.0, 64.0)
    assert dp.rdp_to_epsilon([1.1e-10], [64.0], 1e-5)[0] > 0.0
    # Orders close to 1 are used too (dp_accounting skips α <= 1.01).
    r, a, delta = 0.05, 1.001, 0.1
    balle = r + math.log(1 - 1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
    assert dp.rdp_to_epsilon([r], [a], delta)[0] == pytest.approx(balle, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------


def test_epsilon_decreases_in_noise_and_increases_in_steps_and_rate():
    sigmas = [0.5, 0.7, 1.0, 1.5, 2.5, 4.0, 10.0]
    for conversion in dp.CONVERSIONS:
        e = [dp.epsilon(s, 0.01, 1000, 1e-5, conversion=conversion) for s in sigmas]
        assert all(a > b for a, b in zip(e, e[1:])), e
        e = [dp.epsilon(1.1, 0.01, t, 1e-5, conversion=conversion) for t in (1, 10, 100, 1000)]
        assert all(a < b for a, b in zip(e, e[1:])), e
        e = [
            dp.epsilon(1.1, q, 100, 1e-5, conversion=conversion)
            for q in (1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0)
        ]
        assert all(a < b for a, b in zip(e, e[1:])), e
        e = [dp.epsilon(1.1, 0.01, 100, d, conversion=conversion) for d in (1e-3, 1e-5, 1e-9)]
        assert all(a < b for a, b in zip(e, e[1:])), e


def test_classic_conversion_is_never_smaller():
    for sigma, q, steps, delta, _ in EPSILON:
        assert dp.epsilon(sigma, q, steps, delta, conversion="classic") >= dp.epsilon(
            sigma, q, steps, delta
        )


def test_rdp_composes_linearly_and_grows_with_the_order():
    orders = list(range(2, 40))
    one = dp.rdp(1.3, 0.02, 1, orders)
    np.testing.assert_allclose(dp.rdp(1.3, 0.02, 777, orders), 777 * one, rtol=1e-15)
    assert (np.diff(one) > 0).all()  # Rényi divergence is non-decreasing in α
    # Composition of two phases through rdp_to_epsilon equals one longer run.
    two = dp.rdp(1.3, 0.02, 300, orders) + dp.rdp(1.3, 0.02, 477, orders)
    assert dp.rdp_to_epsilon(two, orders, 1e-5)[0] == pytest.approx(
        dp.epsilon(1.3, 0.02, 777, 1e-5, orders=orders), rel=1e-14
    )


def test_edge_cases():
    assert dp.epsilon(1.0, 0.01, 0, 1e-5) == 0.0
    assert dp.epsilon(0.0, 0.01, 0, 1e-5, conversion="classic") == 0.0
    np.testing.assert_array_equal(dp.rdp(1.0, 0.3, 0, [2.0, 2.5]), [0.0, 0.0])
    assert dp.epsilon(0.0, 0.01, 1, 1e-5) == INF
    assert dp.epsilon(0.0, 1.0, 5, 1e-5, conversion="classic") == INF
    assert np.isinf(dp.rdp(0.0, 0.5, 2, [1.5, 2.0])).all()
    assert dp.rdp_to_epsilon([INF, INF], [2.0, 3.0], 1e-5)[0] == INF
    # Tiny noise: huge but finite; huge noise: tiny.
    assert 1e3 < dp.epsilon(0.05, 0.01, 10, 1e-5) < INF
    assert dp.epsilon(1e4, 0.01, 10, 1e-5) < 0.01
    # numpy and 0-d array inputs are accepted like Python numbers.
    assert dp.epsilon(np.float32(1.5), np.float64(0.01), np.int64(10), np.asarray(1e-5)) == (
        dp.epsilon(float(np.float32(1.5)), 0.01, 10, 1e-5)
    )


# ---------------------------------------------------------------------------------------
# noise_multiplier_for
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,q,steps,delta,conversion",
    [
        (3.0, 256 / 60000, 14063, 1e-5, "balle2020"),  # σ ≈ 1: bracket found going down
        (0.5, 0.01, 10000, 1e-5, "classic"),  # σ > 1: doubling
        (8.0, 0.3, 20, 1e-5, "balle2020"),  # σ < 1
        (1.0, 1.0, 1, 1e-6, "balle2020"),  # unsampled: σ ≈ 4.530877117
    ],
)
def test_noise_multiplier_for_inverts_epsilon(target, q, steps, delta, conversion):
    rtol = 1e-7
    sigma = dp.noise_multiplier_for(target, q, steps, delta, conversion=conversion, rtol=rtol)
    assert dp.epsilon(sigma, q, steps, delta, conversion=conversion) <= target
    assert dp.epsilon(sigma * (1 - rtol), q, steps, delta, conversion=conversion) > target
    # ε is continuous in σ here, so the returned σ hits the target closely.
    assert dp.epsilon(sigma, q, steps, delta, conversion=conversion) == pytest.approx(
        target, rel=1e-5
    )


def test_noise_multiplier_for_edge_cases():
    assert dp.noise_multiplier_for(1.0, 0.01, 0, 1e-5) == 0.0
    # The classic conversion cannot go below log(1/δ)/(max order − 1), whatever σ.
    floor = math.log(1e5) / (1024 - 1)
    with pytest.raises(ValueError, match="target_epsilon=0.01 is unreachable"):
        dp.noise_multiplier_for(0.01, 0.01, 10, 1e-5, conversion="classic")
    assert dp.noise_multiplier_for(1.5 * floor, 0.01, 10, 1e-5, conversion="classic") > 0
    with pytest.raises(ValueError, match="max_noise_multiplier=2.0"):
        dp.noise_multiplier_for(1.0, 0.01, 10000, 1e-5, max_noise_multiplier=2.0)
    # The unsampled Gaussian calibrated to (1, 1e-6) above, recovered within the tolerance.
    orders = [0.001 * i for i in range(1001, 100000)]
    sigma = dp.noise_multiplier_for(1.0, 1.0, 1, 1e-6, orders=orders, rtol=1e-9)
    assert sigma == pytest.approx(4.530877117, rel=1e-8)


# ---------------------------------------------------------------------------------------
# Boundary validation: the error names the argument
# ---------------------------------------------------------------------------------------

GOOD = dict(noise_multiplier=1.0, sample_rate=0.01, steps=10, delta=1e-5)
BAD = [
    ("noise_multiplier", -0.1, ValueError),
    ("noise_multiplier", math.nan, ValueError),
    ("noise_multiplier", INF, ValueError),
    ("noise_multiplier", True, TypeError),
    ("noise_multiplier", "1.0", TypeError),
    ("noise_multiplier", [1.0], TypeError),
    ("sample_rate", 0.0, ValueError),
    ("sample_rate", 1.5, ValueError),
    ("sample_rate", -0.2, ValueError),
    ("sample_rate", math.nan, ValueError),
    ("sample_rate", 1 + 0j, TypeError),
    ("steps", -1, ValueError),
    ("steps", 1.5, TypeError),
    ("steps", 10.0, TypeError),
    ("steps", True, TypeError),
    ("delta", 0.0, ValueError),
    ("delta", 1.0, ValueError),
    ("delta", -1e-5, ValueError),
    ("delta", INF, ValueError),
]


@pytest.mark.parametrize("name,value,error", BAD)
def test_epsilon_rejects(name, value, error):
    with pytest.raises(error, match=f"epsilon: {name}"):
        dp.epsilon(**{**GOOD, name: value})


@pytest.mark.parametrize("name,value,error", [b for b in BAD if b[0] != "delta"])
def test_rdp_rejects(name, value, error):
    args = {k: v for k, v in GOOD.items() if k != "delta"}
    with pytest.raises(error, match=f"rdp: {name}"):
        dp.rdp(**{**args, name: value}, orders=[2.0])


@pytest.mark.parametrize(
    "orders,error",
    [
        ([1.0, 2.0], ValueError),
        ([0.5], ValueError),
        ([2.0, INF], ValueError),
        ([2.0, math.nan], ValueError),
        ([], ValueError),
        ([[2.0, 3.0]], ValueError),
        (2.0, ValueError),
        ("2,3", TypeError),
        ([True, False], TypeError),
    ],
)
def test_orders_rejected(orders, error):
    with pytest.raises(error, match="orders"):
        dp.epsilon(**GOOD, orders=orders)
    with pytest.raises(error, match="orders"):
        dp.rdp(1.0, 0.01, 10, orders)


def test_other_arguments_rejected():
    with pytest.raises(ValueError, match="conversion must be one of"):
        dp.epsilon(**GOOD, conversion="mironov")
    with pytest.raises(ValueError, match="rdp_values must have shape \\(2,\\)"):
        dp.rdp_to_epsilon([0.1], [2.0, 3.0], 1e-5)
    with pytest.raises(ValueError, match="rdp_values must be >= 0"):
        dp.rdp_to_epsilon([-0.1, 0.2], [2.0, 3.0], 1e-5)
    with pytest.raises(ValueError, match="rdp_to_epsilon: delta"):
        dp.rdp_to_epsilon([0.1], [2.0], 1.0)
    nm = dict(sample_rate=0.01, steps=10, delta=1e-5)
    for kwargs, error, name in [
        (dict(target_epsilon=0.0), ValueError, "target_epsilon"),
        (dict(target_epsilon=-1.0), ValueError, "target_epsilon"),
        (dict(target_epsilon=INF), ValueError, "target_epsilon"),
        (dict(target_epsilon=1.0, rtol=0.0), ValueError, "rtol"),
        (dict(target_epsilon=1.0, rtol=0.7), ValueError, "rtol"),
        (dict(target_epsilon=1.0, max_noise_multiplier=0.0), ValueError, "max_noise_multiplier"),
        (dict(target_epsilon=1.0, steps=2.0), TypeError, "steps"),
        (dict(target_epsilon=1.0, conversion=None), ValueError, "conversion"),
    ]:
        with pytest.raises(error, match=f"noise_multiplier_for: {name}"):
            dp.noise_multiplier_for(**{**nm, **kwargs})


def test_public_api():
    assert set(dp.__all__) >= {
        "epsilon",
        "noise_multiplier_for",
        "rdp",
        "rdp_to_epsilon",
        "DEFAULT_ORDERS",
        "CONVERSIONS",
    }
    assert dp.epsilon is accounting.epsilon
