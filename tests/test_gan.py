"""The RealUID + GAN pieces: encoder features of MLP and UNet, the head, the logistic losses, GAN times."""

import math

import pytest
import torch
from torch.nn import functional as F

from realuid.gan import (
    DiscriminatorHead,
    discriminator_loss,
    encoder_features,
    feature_dim,
    forward_with_features,
    gan_time_sample,
    generator_gan_loss,
)
from realuid.matching import make_family
from realuid.models import build_model

MLP_ARGS = dict(dim=3, hidden_dim=24, depth=2, time_embed_dim=16, dropout=0.0)
UNET_ARGS = dict(shape=[3, 8, 8], channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions="4",
                 num_heads=2, num_head_channels=-1, dropout=0.0)


def random_model(arch: str, classes: int = 0):
    """Every weight random: torchcfm zero-initialises its last layers, which would hide input dependence."""
    args = dict(MLP_ARGS if arch == "mlp" else UNET_ARGS, num_classes=classes)
    torch.manual_seed(0)
    net = build_model({"arch": arch, "args": args})
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return net.eval()


def inputs(arch: str, batch: int = 4, classes: int = 0, seed: int = 1):
    rng = torch.Generator().manual_seed(seed)
    shape = (MLP_ARGS["dim"],) if arch == "mlp" else tuple(UNET_ARGS["shape"])
    t = torch.rand(batch, generator=rng)
    x = torch.randn(batch, *shape, generator=rng)
    y = torch.randint(0, classes, (batch,), generator=rng) if classes else None
    return t, x, y


# ------------------------------------------------------------------------------------------- losses


def test_discriminator_loss_hand_written_values():
    real = torch.tensor([0.0, 2.0, -1.0])
    fake = torch.tensor([0.0, -3.0, 1.5])
    # softplus(-r) + softplus(f) = log(1 + e^-r) + log(1 + e^f)
    expected = torch.tensor([
        2 * math.log(2.0),
        math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-3.0)),
        math.log(1 + math.exp(1.0)) + math.log(1 + math.exp(1.5)),
    ])
    torch.testing.assert_close(discriminator_loss(real, fake), expected)


def test_generator_gan_loss_hand_written_values():
    fake = torch.tensor([0.0, 2.0, -1.0, 30.0])
    expected = torch.tensor([math.log(2.0), math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0)),
                             math.log1p(math.exp(-30.0))])
    torch.testing.assert_close(generator_gan_loss(fake), expected)


def test_losses_are_negative_log_likelihoods_of_the_right_labels():
    """Identity on random logits: the losses are binary cross-entropies with real -> 1, generated -> 0."""
    rng = torch.Generator().manual_seed(3)
    real, fake = 4 * torch.randn(64, generator=rng), 4 * torch.randn(64, generator=rng)
    bce = lambda z, label: F.binary_cross_entropy_with_logits(z, torch.full_like(z, label), reduction="none")  # noqa: E731
    torch.testing.assert_close(discriminator_loss(real, fake), bce(real, 1.0) + bce(fake, 0.0))
    torch.testing.assert_close(generator_gan_loss(fake), bce(fake, 1.0))


def test_loss_gradients_push_logits_the_right_way():
    real = torch.zeros(2, requires_grad=True)
    fake = torch.zeros(2, requires_grad=True)
    discriminator_loss(real, fake).sum().backward()
    # d/dr softplus(-r) = -sigmoid(-r) = -1/2 at 0; d/df softplus(f) = sigmoid(f) = 1/2.
    torch.testing.assert_close(real.grad, torch.full((2,), -0.5))
    torch.testing.assert_close(fake.grad, torch.full((2,), 0.5))


def test_losses_are_float32_under_low_precision_logits():
    logits = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert discriminator_loss(logits, logits).dtype == torch.float32
    assert generator_gan_loss(logits).dtype == torch.float32


@pytest.mark.parametrize("real, fake, match", [
    (torch.zeros(3), torch.zeros(4), "shape"),
    (torch.zeros(3, 1), torch.zeros(3, 1), r"\[B\] tensor"),
    ([0.0], torch.zeros(1), r"\[B\] tensor"),
])
def test_discriminator_loss_refuses_bad_logits(real, fake, match):
    with pytest.raises(ValueError, match=match):
        discriminator_loss(real, fake)


def test_generator_gan_loss_refuses_bad_logits():
    with pytest.raises(ValueError, match=r"\[B\] tensor"):
        generator_gan_loss(torch.zeros(2, 2))


# ----------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("arch, expected_dim", [("mlp", 24), ("unet", 64)])
@pytest.mark.parametrize("classes", [0, 3])
def test_encoder_feature_shape(arch, expected_dim, classes):
    net = random_model(arch, classes)
    t, x, y = inputs(arch, batch=5, classes=classes)
    assert feature_dim(net) == expected_dim
    assert encoder_features(net, t, x, y).shape == (5, expected_dim)


@pytest.mark.parametrize("arch", ["mlp", "unet"])
@pytest.mark.parametrize("classes", [0, 3])
def test_forward_with_features_matches_model_and_encoder(arch, classes):
    net = random_model(arch, classes)
    t, x, y = inputs(arch, classes=classes)
    out, features = forward_with_features(net, t, x, y)
    assert torch.equal(out, net(t, x, y))
    torch.testing.assert_close(features, encoder_features(net, t, x, y), rtol=0, atol=0)


def test_unet_features_are_the_pooled_middle_block():
    net = random_model("unet")
    t, x, _ = inputs("unet")
    maps = []
    handle = net.middle_block.register_forward_hook(lambda _m, _a, out: maps.append(out))
    net(t, x)
    handle.remove()
    (bottleneck,) = maps
    assert bottleneck.shape == (4, 64, 4, 4)
    torch.testing.assert_close(encoder_features(net, t, x), bottleneck.mean(dim=(2, 3)))


def test_features_depend_on_time_input_and_labels():
    net = random_model("unet", classes=3)
    t, x, y = inputs("unet", classes=3)
    base = encoder_features(net, t, x, y)
    assert not torch.allclose(base, encoder_features(net, t.flip(0), x, y))
    assert not torch.allclose(base, encoder_features(net, t, x + 0.5, y))
    assert not torch.allclose(base, encoder_features(net, t, x, (y + 1) % 3))


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_features_carry_gradients_to_inputs_and_parameters(arch):
    net = random_model(arch)
    t, x, _ = inputs(arch)
    x.requires_grad_(True)
    encoder_features(net, t, x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    first = net.inp.weight if arch == "mlp" else net.input_blocks[0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_hook_is_removed_after_forward_with_features():
    net = random_model("mlp")
    t, x, _ = inputs("mlp")
    forward_with_features(net, t, x)
    assert not net.out._forward_pre_hooks


def test_features_refuse_bad_inputs():
    net = random_model("mlp", classes=3)
    t, x, y = inputs("mlp", classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        encoder_features(net, t, x)
    with pytest.raises(ValueError, match=r"t must be a \[4\]"):
        encoder_features(net, t[:2], x, y)
    with pytest.raises(ValueError, match=r"labels y must have shape \[4\]"):
        forward_with_features(net, t, x, y[:2])
    with pytest.raises(ValueError, match="unconditional"):
        encoder_features(random_model("mlp"), t, x, y)
    with pytest.raises(ValueError, match="MLP and torchcfm's UNetModel"):
        encoder_features(torch.nn.Linear(3, 3), t, x)


# --------------------------------------------------------------------------------------------- head


def test_head_maps_features_to_one_logit_each_and_learns():
    torch.manual_seed(0)
    head = DiscriminatorHead(8, hidden_dim=16)
    rng = torch.Generator().manual_seed(0)
    real = torch.randn(64, 8, generator=rng) + 1.0
    fake = torch.randn(64, 8, generator=rng) - 1.0
    assert head(real).shape == (64,)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    before = discriminator_loss(head(real), head(fake)).mean().item()
    for _ in range(50):
        opt.zero_grad()
        discriminator_loss(head(real), head(fake)).mean().backward()
        opt.step()
    after = discriminator_loss(head(real), head(fake)).mean().item()
    # Separable clouds: the head learns to tell them apart (loss far below chance, 2 log 2).
    assert after < 0.2 < before


def test_head_on_model_features_end_to_end():
    net = random_model("unet")
    t, x, _ = inputs("unet")
    head = DiscriminatorHead(feature_dim(net))
    assert head(encoder_features(net, t, x)).shape == (4,)


def test_head_refuses_bad_sizes():
    with pytest.raises(ValueError, match="feature_dim"):
        DiscriminatorHead(0)
    with pytest.raises(ValueError, match="hidden_dim"):
        DiscriminatorHead(4, hidden_dim=0)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        DiscriminatorHead(4)(torch.zeros(2, 5))


# -------------------------------------------------------------------------------------------- times


def test_gan_times_range_distribution_and_determinism():
    t = gan_time_sample(20000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (20000,)
    assert (t > 0.8).all() and (t <= 1.0).all()
    assert abs(t.mean().item() - 0.9) < 0.002  # U(0.8, 1]: mean 0.9, sd 0.2/sqrt(12)/sqrt(n) ~ 4e-4
    assert torch.equal(t, gan_time_sample(20000, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name, options", [("fm", {}), ("si", {}), ("bridge", {"sigma": 0.5}),
                                           ("diffusion", {"schedule": "vp", "prediction": "eps"})])
def test_gan_times_are_valid_path_times_of_every_family(name, options):
    family = make_family(name, **options)
    t = gan_time_sample(512, torch.Generator().manual_seed(1), t_max=family.t_max)
    assert (t <= family.t_max + 1e-6).all() and (t > 0.8).all()
    x0, x1 = torch.randn(512, 2), torch.randn(512, 2)
    noise = family.sample_noise(x0, rng=torch.Generator().manual_seed(2))
    assert torch.isfinite(family.path_sample(x0, x1, t, noise).x_t).all()


def test_gan_times_honour_the_lower_end_and_device():
    t = gan_time_sample(1000, None, t_min=0.5, t_max=0.6, device="cpu")
    assert (t > 0.5).all() and (t <= 0.6).all()
    assert gan_time_sample(0, None).shape == (0,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=-1), "n must be"),
    (dict(n=2.0), "n must be"),
    (dict(n=2, t_min=0.9, t_max=0.9), "t_min < t_max"),
    (dict(n=2, t_max=1.5), "t_max <= 1"),
    (dict(n=2, t_min=float("nan")), "finite"),
])
def test_gan_times_refuse_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gan_time_sample(**kwargs)
