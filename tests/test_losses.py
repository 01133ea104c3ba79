"""RealUID losses: values and gradients against hand-written forms, identities, validation."""

import itertools

import pytest
import torch

from realuid.distillation_losses import fake_loss, generator_loss
from realuid.losses import matching_loss

SHAPES = [(5, 2), (3, 1, 8, 8)]
COEFFICIENTS = [(1.0, 1.0), (1.0, 0.9), (0.92, 0.94), (0.9, 1.0), (0.5, 0.3), (0.98, 0.96)]


def tensors(shape, count, seed=0):
    rng = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=rng, dtype=torch.float64, requires_grad=True) for _ in range(count)]


def random_weight(batch, seed=1):
    return torch.rand(batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def per_sample(values):
    """Explicit per-sample sum over every non-batch dim, written as a loop over samples."""
    return torch.stack([v.sum() for v in values])


def grads(loss, inputs):
    return torch.autograd.grad(loss.sum(), inputs)


# ---------------------------------------------------------------------------------- matching loss


@pytest.mark.parametrize("shape", SHAPES)
def test_matching_loss_is_the_weighted_squared_error(shape):
    f, g = tensors(shape, 2)
    w = random_weight(shape[0])
    loss = matching_loss(f, g, w)
    assert loss.shape == (shape[0],)
    torch.testing.assert_close(loss, w * per_sample((f - g) ** 2))
    torch.testing.assert_close(matching_loss(f, g), per_sample((f - g) ** 2))
    grad_f, grad_g = grads(loss, [f, g])
    torch.testing.assert_close(grad_f, 2 * w.view(-1, *[1] * (len(shape) - 1)) * (f - g))
    torch.testing.assert_close(grad_g, -grad_f)


# --------------------------------------------------------------------------------------- fake loss


def w_col(w, shape):
    return w.view(-1, *[1] * (len(shape) - 1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta", COEFFICIENTS)
def test_fake_loss_value_and_gradients_match_the_hand_written_form(alpha, beta, shape):
    f_gen, g_gen, f_data, g_data = tensors(shape, 4)
    w = random_weight(shape[0])
    loss = fake_loss(f_gen, g_gen, f_data, g_data, alpha=alpha, beta=beta, weight=w)
    expected = w * per_sample(
        alpha * f_gen**2 - 2 * beta * f_gen * g_gen + (1 - alpha) * f_data**2 - 2 * (1 - beta) * f_data * g_data
    )
    torch.testing.assert_close(loss, expected)
    wc = w_col(w, shape)
    got = grads(loss, [f_gen, g_gen, f_data, g_data])
    want = [
        wc * (2 * alpha * f_gen - 2 * beta * g_gen),
        wc * (-2 * beta * f_gen),
        wc * (2 * (1 - alpha) * f_data - 2 * (1 - beta) * g_data),
        wc * (-2 * (1 - beta) * f_data),
    ]
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("shape", SHAPES)
def test_data_free_fake_loss_has_the_gradient_of_plain_matching(shape):
    f_gen, g_gen = tensors(shape, 2)
    w = random_weight(shape[0])
    loss = fake_loss(f_gen, g_gen, None, None, alpha=1.0, beta=1.0, weight=w)
    um = matching_loss(f_gen, g_gen, w)
    # Same function up to the f-independent w ||g||^2.
    torch.testing.assert_close(loss, um - w * per_sample(g_gen**2))
    (grad_fake,) = grads(loss, [f_gen])
    (grad_um,) = grads(um, [f_gen])
    torch.testing.assert_close(grad_fake, grad_um)
    # Passing real tensors at a = b = 1 changes nothing: their coefficients are zero.
    f_data, g_data = tensors(shape, 2, seed=7)
    torch.testing.assert_close(fake_loss(f_gen, g_gen, f_data, g_data, alpha=1, beta=1, weight=w), loss)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.9, 0.5, 0.99])
def test_alpha_one_keeps_the_real_data_term(beta, shape):
    """At a = 1, b < 1 the completed-square form is singular; the expanded form keeps
    -2(1-b)<f_data, g_data>, whose gradient in f_data is -2(1-b) g_data."""
    f_gen, g_gen, f_data, g_data = tensors(shape, 4)
    loss = fake_loss(f_gen, g_gen, f_data, g_data, alpha=1.0, beta=beta)
    (grad_f_data,) = grads(loss, [f_data])
    torch.testing.assert_close(grad_f_data, -2 * (1 - beta) * g_data)
    data_free_part = per_sample(f_gen**2 - 2 * beta * f_gen * g_gen)
    torch.testing.assert_close(loss - data_free_part, -2 * (1 - beta) * per_sample(f_data * g_data))
    assert (loss - data_free_part).abs().max() > 1e-3


@pytest.mark.parametrize("alpha,beta", [(0.92, 0.94), (0.5, 0.3), (0.98, 1.0)])
def test_fake_loss_has_the_gradients_of_the_completed_square_form_when_alpha_below_one(alpha, beta):
    f_gen, g_gen, f_data, g_data = tensors((4, 3), 4)
    expanded = fake_loss(f_gen, g_gen, f_data, g_data, alpha=alpha, beta=beta)
    square = per_sample(
        alpha * (f_gen - beta / alpha * g_gen) ** 2 + (1 - alpha) * (f_data - (1 - beta) / (1 - alpha) * g_data) ** 2
    )
    for a, b in zip(grads(expanded, [f_gen, f_data]), grads(square, [f_gen, f_data])):
        torch.testing.assert_close(a, b)


def test_data_free_fake_loss_is_minimised_at_the_target():
    """For a = b = 1 the per-sample quadratic in f is minimised at f = g: zero gradient there, and
    gradient descent from anywhere converges to it."""
    (g,) = tensors((6, 3), 1)
    g = g.detach()
    f = torch.zeros_like(g, requires_grad=True)
    f_star = g.clone().requires_grad_()
    (grad_at_target,) = grads(fake_loss(f_star, g, None, None, alpha=1, beta=1), [f_star])
    torch.testing.assert_close(grad_at_target, torch.zeros_like(g))
    optimizer = torch.optim.SGD([f], lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        fake_loss(f, g, None, None, alpha=1, beta=1).sum().backward()
        optimizer.step()
    torch.testing.assert_close(f.detach(), g, atol=1e-8, rtol=0)


@pytest.mark.parametrize("alpha,beta", COEFFICIENTS)
def test_fake_loss_optimum_mixes_generated_and_real_targets(alpha, beta):
    """When generated and real samples sit at the same x_t (one shared f), the quadratic
    ||f||^2 - 2<f, b g_gen + (1-b) g_data> is minimised at f = b g_gen + (1-b) g_data."""
    g_gen, g_data = (v.detach() for v in tensors((5, 2), 2))
    f = (beta * g_gen + (1 - beta) * g_data).requires_grad_()
    loss = fake_loss(f, g_gen, f, g_data, alpha=alpha, beta=beta)
    (grad_f,) = grads(loss, [f])
    torch.testing.assert_close(grad_f, torch.zeros_like(f))


# ---------------------------------------------------------------------------------- generator loss


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta", COEFFICIENTS)
def test_generator_loss_value_and_gradients_match_the_hand_written_form(alpha, beta, shape):
    f_gen, f_teacher, g_gen = tensors(shape, 3)
    w = random_weight(shape[0])
    loss = generator_loss(f_gen, f_teacher, g_gen, alpha=alpha, beta=beta, weight=w)
    expected = w * per_sample(alpha * (f_teacher**2 - f_gen**2) - 2 * beta * (f_teacher - f_gen) * g_gen)
    torch.testing.assert_close(loss, expected)
    wc = w_col(w, shape)
    got = grads(loss, [f_gen, f_teacher, g_gen])
    want = [
        wc * (-2 * alpha * f_gen + 2 * beta * g_gen),
        wc * (2 * alpha * f_teacher - 2 * beta * g_gen),
        wc * (-2 * beta * (f_teacher - f_gen)),
    ]
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta", COEFFICIENTS)
def test_generator_loss_is_zero_when_fake_equals_teacher(alpha, beta, shape):
    f, g = tensors(shape, 2)
    loss = generator_loss(f, f.detach().clone(), g, alpha=alpha, beta=beta, weight=random_weight(shape[0]))
    torch.testing.assert_close(loss, torch.zeros(shape[0], dtype=f.dtype))


def test_generator_loss_is_the_fake_objective_at_the_teacher_minus_at_the_fake_model():
    f_gen, f_teacher, g_gen = tensors((4, 3), 3)
    for alpha, beta in COEFFICIENTS:
        at_teacher = fake_loss(f_teacher, g_gen, None, None, alpha=1, beta=1) if alpha == beta == 1 else None
        gen = generator_loss(f_gen, f_teacher, g_gen, alpha=alpha, beta=beta)
        generated_part = lambda f: per_sample(alpha * f**2 - 2 * beta * f * g_gen)  # noqa: E731
        torch.testing.assert_close(gen, generated_part(f_teacher) - generated_part(f_gen))
        if at_teacher is not None:
            torch.testing.assert_close(gen, at_teacher - fake_loss(f_gen, g_gen, None, None, alpha=1, beta=1))


# -------------------------------------------------------------------------------------- validation

BAD_COEFFICIENTS = [0.0, -0.1, 1.0000001, float("nan"), float("inf"), True, "0.9", None, torch.tensor(0.9)]


@pytest.mark.parametrize("bad", BAD_COEFFICIENTS, ids=[repr(b) for b in BAD_COEFFICIENTS])
def test_alpha_and_beta_outside_the_unit_interval_are_rejected(bad):
    f_gen, g_gen, f_data, g_data = (v.detach() for v in tensors((3, 2), 4))
    for which in ("alpha", "beta"):
        kwargs = {"alpha": 0.9, "beta": 0.9, which: bad}
        with pytest.raises(ValueError, match=which):
            fake_loss(f_gen, g_gen, f_data, g_data, **kwargs)
        with pytest.raises(ValueError, match=which):
            generator_loss(f_gen, f_data, g_gen, **kwargs)


def test_integer_one_is_an_accepted_coefficient():
    f, g = (v.detach() for v in tensors((3, 2), 2))
    fake_loss(f, g, None, None, alpha=1, beta=1)


@pytest.mark.parametrize(
    "weight,match",
    [
        (torch.tensor([1.0, float("nan"), 1.0]), "NaN or inf"),
        (torch.tensor([1.0, float("inf"), 1.0]), "NaN or inf"),
        (torch.ones(4), r"shape \[3\]"),
        (torch.ones(3, 1), r"shape \[3\]"),
        (1.0, "torch.Tensor"),
    ],
)
def test_bad_weights_are_rejected(weight, match):
    f, g = (v.detach() for v in tensors((3, 2), 2))
    with pytest.raises(ValueError, match=match):
        matching_loss(f, g, weight)
    with pytest.raises(ValueError, match=match):
        fake_loss(f, g, f, g, alpha=0.9, beta=0.9, weight=weight)
    with pytest.raises(ValueError, match=match):
        generator_loss(f, g, g, alpha=0.9, beta=0.9, weight=weight)


def test_shape_mismatches_are_rejected():
    a, b = torch.randn(3, 2), torch.randn(3, 4)
    c = torch.randn(4, 2)
    with pytest.raises(ValueError, match="shape"):
        matching_loss(a, b)
    with pytest.raises(ValueError, match="shape"):
        fake_loss(a, b, a, a, alpha=0.9, beta=0.9)
    with pytest.raises(ValueError, match="f_data has shape"):
        fake_loss(a, a, c, c, alpha=0.9, beta=0.9)
    with pytest.raises(ValueError, match="g_data"):
        fake_loss(a, a, a, b, alpha=0.9, beta=0.9)
    for args in itertools.permutations([a, a, b]):
        with pytest.raises(ValueError, match="shape"):
            generator_loss(*args, alpha=0.9, beta=0.9)
    with pytest.raises(ValueError, match="non-batch"):
        matching_loss(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="torch.Tensor"):
        matching_loss([1.0], [1.0])


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.9), (0.9, 1.0), (0.9, 0.9)])
def test_missing_data_terms_are_rejected_unless_data_free(alpha, beta):
    f, g = torch.randn(3, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match="required unless alpha = beta = 1"):
        fake_loss(f, g, None, None, alpha=alpha, beta=beta)
    with pytest.raises(ValueError, match="both f_data and g_data"):
        fake_loss(f, g, f, None, alpha=alpha, beta=beta)
    with pytest.raises(ValueError, match="both f_data and g_data"):
        fake_loss(f, g, None, g, alpha=1.0, beta=1.0)


def test_docstrings_cite_the_paper_and_give_shapes():
    for fn in (matching_loss, fake_loss, generator_loss):
        assert "2509.22459" in fn.__doc__ and "ICLR 2026" in fn.__doc__ and "[B, ...]" in fn.__doc__
