"""Backbones, the one-step generator wrapper and model specs: shapes, conditioning, conversions, errors."""

import dataclasses

import pytest
import torch

from realuid.config import ModelConfig
from realuid.matching import make_family
from realuid.models import MLP, build_model, model_spec
from realuid.sampling import OneStepGenerator

# torchcfm's UNet normalises with 32 groups, so 32 base channels is the smallest width it builds.
MODEL = ModelConfig(arch="auto", hidden_dim=32, depth=2, time_embed_dim=16, channels=32, channel_mult=[1, 2],
                    num_res_blocks=1, attention_resolutions="", num_heads=1, num_head_channels=-1,
                    dropout=0.0, class_cond=False)
POINT_SHAPE, IMAGE_SHAPE = (2,), (1, 8, 8)
FAMILIES = [("fm", {}), ("diffusion", {"schedule": "vp", "prediction": "eps"}),
            ("diffusion", {"schedule": "ve", "prediction": "x1"}), ("si", {"interpolant": "trig"}),
            ("bridge", {"sigma": 0.5})]


def build(shape, classes=0, **changes):
    """A model with every weight random: torchcfm zero-initialises its last layers, so a fresh UNet
    outputs exactly 0 and would hide any dependence on its inputs."""
    cfg = dataclasses.replace(MODEL, class_cond=bool(classes), **changes)
    torch.manual_seed(0)
    net = build_model(model_spec(cfg, shape, classes))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return net


def inputs(shape, batch=5, seed=0):
    rng = torch.Generator().manual_seed(seed)
    return torch.rand(batch, generator=rng), torch.randn(batch, *shape, generator=rng)


@pytest.mark.parametrize("shape, arch", [(POINT_SHAPE, "mlp"), ((5,), "mlp"), (IMAGE_SHAPE, "unet")])
def test_auto_arch_and_output_shape(shape, arch):
    spec = model_spec(MODEL, shape, 0)
    assert spec["arch"] == arch
    t, x = inputs(shape)
    assert build_model(spec)(t, x).shape == x.shape


@pytest.mark.parametrize("shape", [POINT_SHAPE, IMAGE_SHAPE])
def test_class_conditional_needs_labels_and_uses_them(shape):
    net = build(shape, classes=3)
    t, x = inputs(shape, batch=4)
    y = torch.tensor([0, 1, 2, 0])
    out = net(t, x, y)
    assert out.shape == x.shape
    # Changing only the labels changes the output: the label embedding reaches the network.
    assert not torch.allclose(out, net(t, x, torch.tensor([1, 2, 0, 1])))
    with pytest.raises(ValueError, match="class-conditional"):
        net(t, x)


def test_unconditional_model_ignores_missing_labels():
    net = build(POINT_SHAPE)
    t, x = inputs(POINT_SHAPE)
    assert torch.equal(net(t, x), net(t, x, None))


def test_mlp_depends_on_time():
    net = build(POINT_SHAPE)
    _, x = inputs(POINT_SHAPE)
    assert not torch.allclose(net(torch.zeros(5), x), net(torch.full((5,), 0.7), x))


@pytest.mark.parametrize("name, options", FAMILIES)
@pytest.mark.parametrize("shape", [POINT_SHAPE, IMAGE_SHAPE])
def test_one_step_generator_is_the_family_conversion(name, options, shape):
    family = make_family(name, **options)
    net = build(shape)
    _, z = inputs(shape, seed=1)
    t_src = torch.full((z.shape[0],), family.t_src)
    # By hand: the generator reads the source state at t_src and converts the network output to x1.
    state = family.source_state(z, t_src)
    expected = family.predict_x1(t_src, state, net(t_src, state, None))
    with torch.no_grad():
        got = OneStepGenerator(family, net)(z)
    torch.testing.assert_close(got, expected.detach())


def test_one_step_generator_closed_form_for_flow_matching():
    """fm: x1 = z + G(0, z), written out without going through the family."""
    family, net = make_family("fm"), build(POINT_SHAPE)
    _, z = inputs(POINT_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(OneStepGenerator(family, net)(z), z + net(torch.zeros(5), z))


def test_one_step_generator_passes_labels_and_gradients():
    family, net = make_family("fm"), build(POINT_SHAPE, classes=2)
    gen = OneStepGenerator(family, net)
    _, z = inputs(POINT_SHAPE)
    with pytest.raises(ValueError, match="class-conditional"):
        gen(z)
    gen(z, torch.zeros(5, dtype=torch.long)).sum().backward()
    assert all(p.grad is not None for p in net.inp.parameters())


def test_spec_carries_constructor_args_and_rebuilds_the_same_model():
    spec = model_spec(MODEL, POINT_SHAPE, 0)
    assert spec["args"] == dict(dim=2, hidden_dim=32, depth=2, time_embed_dim=16, num_classes=0, dropout=0.0)
    a, b = build_model(spec), build_model(spec)
    b.load_state_dict(a.state_dict())  # same architecture, parameter for parameter
    assert isinstance(a, MLP)


def test_spec_without_class_cond_drops_labels():
    assert model_spec(MODEL, POINT_SHAPE, 10)["args"]["num_classes"] == 0
    assert model_spec(dataclasses.replace(MODEL, class_cond=True), POINT_SHAPE, 10)["args"]["num_classes"] == 10


@pytest.mark.parametrize(
    "changes, shape, classes, message",
    [
        ({"arch": "mlp"}, IMAGE_SHAPE, 0, "mlp backbone needs points"),
        ({"arch": "unet"}, POINT_SHAPE, 0, "unet backbone needs images"),
        ({"class_cond": True}, POINT_SHAPE, 0, "no labels"),
        ({"channel_mult": [1, 2, 2, 2]}, (1, 12, 12), 0, "not divisible"),
    ],
)
def test_model_spec_rejects_impossible_combinations(changes, shape, classes, message):
    with pytest.raises(ValueError, match=message):
        model_spec(dataclasses.replace(MODEL, **changes), shape, classes)


def test_unknown_architecture_in_spec():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"arch": "transformer", "args": {}})


def test_unet_width_must_suit_group_norm():
    """The UNet's GroupNorm has 32 groups: a width that is not a multiple of 32 fails loudly, at spec time."""
    with pytest.raises(ValueError, match="multiple of 32"):
        model_spec(dataclasses.replace(MODEL, channels=8), IMAGE_SHAPE, 0)
