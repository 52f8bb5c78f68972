"""Bad input: clear ValueError/TypeError naming the layer or argument, before compiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import losses
from jbp.layers import ELU, Dense, LeakyReLU, ReLU


@pytest.fixture
def net():
    model = jbp.Sequential([Dense(8), ReLU(), Dense(3)])
    params, _ = model.init(jax.random.key(0), (4,))
    return model, params


def test_data_width_mismatch_names_the_layer(net):
    model, params = net
    x = jnp.ones((5, 6)) * 0.5
    f = jbp.value_and_grad(model, losses.softmax_cross_entropy)
    msg = r"layers\[0\] \(Dense\): Dense\(units=8.*expected input of shape \(batch, \.\.\., 4\), got \(5, 6\)"
    with pytest.raises(ValueError, match=msg):
        f(params, x, jnp.zeros(5, int))
    with pytest.raises(ValueError, match=msg):  # at trace time, under jit
        jax.jit(f)(params, x, jnp.zeros(5, int))
    with pytest.raises(ValueError, match=msg):
        model.apply(params, x)


def test_width_mismatch_deeper_layer_is_named():
    model = jbp.Sequential([Dense(8), ReLU(), Dense(3)])
    params, _ = model.init(jax.random.key(0), (4,))
    other, _ = jbp.Sequential([Dense(8), ReLU(), Dense(3)]).init(jax.random.key(0), (4,))
    params = (params[0], (), {"W": jnp.zeros((7, 3)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"layers\[2\] \(Dense\).*got \(2, 8\)"):
        model.apply(params, jnp.ones((2, 4)))


def test_params_from_another_model(net):
    model, params = net
    with pytest.raises(
        ValueError,
        match=r"params must be a tuple with one entry per layer \(3\), got tuple of length 2",
    ):
        model.apply(params[:2], jnp.ones((2, 4)))


def test_target_of_wrong_shape(net):
    model, params = net
    f = jbp.value_and_grad(model, losses.mse)
    with pytest.raises(
        ValueError, match=r"mse: target must have the prediction's shape \(5, 3\), got \(5, 2\)"
    ):
        f(params, jnp.ones((5, 4)), jnp.zeros((5, 2)))


def test_labels_out_of_range(net):
    model, params = net
    f = jbp.value_and_grad(model, losses.softmax_cross_entropy)
    with pytest.raises(
        ValueError, match=r"labels must lie in \[0, 3\) for 3 classes, got values in \[0, 7\]"
    ):
        f(params, jnp.ones((3, 4)), jnp.array([0, 7, 1]))


def test_x_and_y_lengths_differ(net):
    model, params = net
    with pytest.raises(
        ValueError, match=r"x and y: expected the same number of examples, got x with 5"
    ):
        jbp.value_and_grad(model, losses.mse)(params, jnp.ones((5, 4)), jnp.zeros((4, 3)))


@pytest.mark.parametrize("units", [0, -3, 2.5, True, "8"])
def test_dense_units_must_be_positive_int(units):
    with pytest.raises(ValueError, match=r"Dense: units must be a positive integer, got"):
        Dense(units)


def test_negative_elu_alpha():
    with pytest.raises(ValueError, match=r"ELU: alpha must be a finite number ≥ 0, got -1.0"):
        ELU(-1.0)
    with pytest.raises(ValueError, match="LeakyReLU: negative_slope must be finite"):
        LeakyReLU(float("nan"))


@pytest.mark.parametrize("x", [[[1.0, 2.0, 3.0, 4.0]], "data", None])
def test_non_array_input(net, x):
    model, params = net
    with pytest.raises(
        TypeError, match=r"x: expected an array \(jax.Array or numpy.ndarray\), got"
    ):
        jbp.value_and_grad(model, losses.mse)(params, x, jnp.zeros((1, 3)))


def test_integer_input_to_dense(net):
    model, params = net
    with pytest.raises(
        TypeError, match=r"layers\[0\] \(Dense\): x: expected a floating-point array, got dtype int"
    ):
        model.apply(params, np.ones((2, 4), dtype=np.int32))


def test_unknown_initializer_name():
    with pytest.raises(ValueError, match="he_norml"):
        Dense(3, w_init="he_norml")


def test_sequential_rejects_non_layers():
    with pytest.raises(
        TypeError, match=r"Sequential: layers\[1\] is not a jbp Layer, got function"
    ):
        jbp.Sequential([Dense(3), lambda z: z])
    with pytest.raises(TypeError, match="expected a sequence of layers"):
        jbp.Sequential(Dense(3))


def test_value_and_grad_argument_types():
    with pytest.raises(TypeError, match="model: expected a jbp Layer"):
        jbp.value_and_grad(lambda p, x: x, losses.mse)
    with pytest.raises(TypeError, match="loss: expected a jbp loss"):
        jbp.value_and_grad(Dense(2), lambda a, b: 0.0)
    with pytest.raises(TypeError, match="regularizer: expected an object with .value"):
        jbp.value_and_grad(Dense(2), losses.mse, regularizer=0.1)


def test_an_int_in_shape_or_an_int_seed_is_named():
    model = jbp.Sequential([Dense(8), ReLU(), Dense(3)])
    with pytest.raises(
        TypeError,
        match=r"in_shape: expected a tuple of ints, the shape of one "
        r"example without the batch axis, got the int 4; write \(4,\)",
    ):
        model.init(jax.random.key(0), 4)
    with pytest.raises(TypeError, match=r"in_shape: expected a tuple of ints >= 0, got \(4.0,\)"):
        model.init(jax.random.key(0), (4.0,))
    with pytest.raises(
        TypeError,
        match=r"key: expected a jax.random key \(jax.random.key\(seed\)\), "
        r"got int \(an int seed is not a key: use jax.random.key\(0\)\)",
    ):
        model.init(0, (4,))
    params, _ = model.init(jax.random.key(0), (4,))
    with pytest.raises(
        TypeError, match=r"key: .*an int seed is not a key: use jax.random.key\(3\)"
    ):
        jbp.check_gradients(model, losses.mse, params, jnp.ones((2, 4)), jnp.ones((2, 3)), key=3)


def test_wrong_dense_params_are_not_blamed_on_the_input(net):
    model, params = net
    x = jnp.ones((5, 4)) * 0.5
    dense = r"layers\[0\] \(Dense\): Dense\(units=8.*"
    cases = [
        (
            dict(W=params[0]["W"].T),
            dense + r"params\['W'\] has shape \(8, 4\), expected "
            r"\(in_features, 8\); it looks transposed",
        ),
        (dict(W=jnp.zeros((4, 5))), dense + r"params\['W'\] has shape \(4, 5\), expected"),
        (dict(b=jnp.zeros(1)), dense + r"params\['b'\] has shape \(1,\), expected \(8,\)"),
    ]
    for change, msg in cases:
        bad = ({**params[0], **change},) + params[1:]
        with pytest.raises(ValueError, match=msg):
            model.apply(bad, x)
    with pytest.raises(
        ValueError,
        match=dense + r"params must be a dict with \['W', 'b'\], "
        r"missing \['b'\] \(got \['W'\]\)",
    ):
        model.apply(({"W": params[0]["W"]},) + params[1:], x)


def test_validation_data_errors_say_validation_data(net):
    model, params = net
    x = np.random.default_rng(0).standard_normal((6, 4))
    y = np.array([0, 1, 2, 0, 1, 2])
    fit = lambda val, loss=losses.softmax_cross_entropy: jbp.fit(  # noqa: E731
        model,
        params,
        loss,
        jbp.optim.sgd(0.1),
        (x, y),
        epochs=1,
        key=jax.random.key(0),
        verbose=0,
        validation_data=val,
    )
    with pytest.raises(ValueError, match=r"^validation_data: y: softmax_cross_entropy: labels"):
        fit((x, y + 1))
    with pytest.raises(
        ValueError,
        match=r"^validation_data: y: softmax_cross_entropy: target must "
        r"be integer labels of shape \(n,\)",
    ):
        fit((x, np.zeros((6, 2))))
    with pytest.raises(ValueError, match=r"^validation_data: x has example shape \(3,\)"):
        fit((x[:, :3], y))
