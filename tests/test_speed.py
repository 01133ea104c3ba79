"""The speed options (realuid.speed): off is the plain network bit for bit; on, the same function up to
float rounding, with the weights' layout unchanged so teacher and generator files load either way."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from realuid.config import DistillConfig, SpeedConfig, in_effect, load_params
from realuid.distill_api import distill_settings
from realuid.matching import make_family
from realuid.models import build_model
from realuid.speed import AutocastGroupNorm, SdpaAttention, prepare_network
from realuid.training.batches import TrainData
from realuid.training.distillation import RealUID, distillation_update
from realuid.training.optimization import make_optimizer

SPEC = {"arch": "unet", "args": dict(shape=[3, 8, 8], channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                     attention_resolutions="4", num_heads=2, num_head_channels=-1, dropout=0.0,
                                     num_classes=0)}


def random_unet(seed: int = 0) -> torch.nn.Module:
    """The tiny attention UNet with every weight random (torchcfm zero-initialises its output layers,
    which would hide differences in the layers before them)."""
    torch.manual_seed(seed)
    net = build_model(SPEC).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net


def inputs(batch: int = 4):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(batch, generator=gen), torch.randn(batch, 3, 8, 8, generator=gen)


def speed(**on) -> SpeedConfig:
    return dataclasses.replace(SpeedConfig(), **on)


def test_all_off_is_the_plain_network_bit_for_bit():
    net = random_unet()
    plain = copy.deepcopy(net)
    prepare_network(net, SpeedConfig())
    t, x = inputs()
    assert [type(m) for m in net.modules()] == [type(m) for m in plain.modules()]
    assert torch.equal(net(t, x), plain(t, x))


def test_sdpa_attention_matches_torchcfm_in_float32_with_the_same_weights():
    classic = random_unet()
    fast = prepare_network(copy.deepcopy(classic), speed(attention="sdpa"))
    assert any(isinstance(m, SdpaAttention) for m in fast.modules())
    assert fast.state_dict().keys() == classic.state_dict().keys()  # a teacher file loads either way
    fast.load_state_dict(classic.state_dict())
    t, x = inputs()
    expected = classic(t, x)
    assert expected.abs().max() > 0.1  # the attention block contributes: a zero output would prove nothing
    torch.testing.assert_close(fast(t, x), expected, rtol=1e-5, atol=1e-5)


def test_sdpa_attention_alone_matches_the_legacy_block_at_several_head_counts():
    from torchcfm.models.unet.unet import QKVAttentionLegacy

    gen = torch.Generator().manual_seed(2)
    for heads in (1, 2, 4):
        qkv = torch.randn(3, heads * 3 * 16, 20, generator=gen)
        torch.testing.assert_close(SdpaAttention(heads)(qkv), QKVAttentionLegacy(heads)(qkv), rtol=1e-5, atol=1e-5)


def test_autocast_groupnorm_stays_bf16_and_is_within_bf16_rounding_of_the_float32_groupnorm():
    from torchcfm.models.unet.nn import GroupNorm32

    torch.manual_seed(3)
    reference = GroupNorm32(32, 64)
    with torch.no_grad():
        reference.weight.normal_(1.0, 0.2)
        reference.bias.normal_(0.0, 0.2)
    fast = copy.deepcopy(reference)
    fast.__class__ = AutocastGroupNorm
    x = (torch.randn(4, 64, 8, 8) * 3 + 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert out.dtype == torch.bfloat16
    expected = reference(x.float())  # the float32 GroupNorm of the same bf16 input
    # Tolerance: one bf16 rounding of outputs of magnitude ~3 (2^-8 relative) plus the bf16 affine terms.
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    assert torch.equal(fast(x.float()), reference(x.float()))  # outside autocast: torchcfm's path


def test_autocast_groupnorm_unet_under_bf16_is_close_to_the_float32_groupnorm_path():
    classic = random_unet()
    fast = prepare_network(copy.deepcopy(classic), speed(groupnorm="autocast"))
    assert fast.state_dict().keys() == classic.state_dict().keys()
    t, x = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = classic(t, x).float(), fast(t, x).float()
    scale = expected.abs().max()
    # Both run bf16 convolutions; the GroupNorms differ by bf16 rounding of their inputs and outputs.
    assert (out - expected).abs().max() <= 0.05 * scale


def test_channels_last_gives_the_same_outputs_and_state_dict_keys():
    classic = random_unet()
    fast = prepare_network(copy.deepcopy(classic), speed(channels_last=True))
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.state_dict().keys() == classic.state_dict().keys()
    t, x = inputs()
    torch.testing.assert_close(fast(t, x), classic(t, x), rtol=1e-5, atol=1e-5)


def test_fused_adam_takes_the_same_steps_as_plain_adam():
    cfg = distill_settings().generator_optim
    nets = [random_unet(), random_unet()]
    opts = [make_optimizer(nets[0].parameters(), cfg, 10)[0], make_optimizer(nets[1].parameters(), cfg, 10, fused=True)[0]]
    assert opts[1].defaults["fused"] and not opts[0].defaults.get("fused")
    t, x = inputs()
    for _ in range(3):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(t, x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_speed_keys_leave_the_state_key_alone_while_off_and_change_it_when_on():
    cfg = load_params("params.yaml").distill
    assert cfg.speed == SpeedConfig()
    assert "speed" not in in_effect(cfg)
    on = dataclasses.replace(cfg, speed=speed(attention="sdpa"))
    assert in_effect(on)["speed"]["attention"] == "sdpa"
    assert in_effect(dataclasses.replace(cfg, speed=SpeedConfig())) == in_effect(cfg)
    assert DistillConfig.__dataclass_fields__["speed"].default == SpeedConfig()  # hand-built configs stay valid


def distillation_run(on: SpeedConfig, updates: int = 2) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    teacher = random_unet()
    cfg = distill_settings(batch_size=4, device="cpu", speed=on)
    uid = RealUID(make_family("fm"), teacher, SPEC, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))
    batch = TrainData(x1=torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1)
    losses = [float(loss) for step in range(updates) for loss, _ in distillation_update(uid, lambda i: batch, step, 0)]
    return losses, uid.generator.net.state_dict()


def test_distillation_with_every_eager_option_on_follows_the_plain_run():
    plain_losses, plain_weights = distillation_run(SpeedConfig())
    fast_losses, fast_weights = distillation_run(
        speed(fused_adam=True, channels_last=True, cudnn_benchmark=True, attention="sdpa"))
    assert fast_weights.keys() == plain_weights.keys()  # the generator file's layout is the teacher's
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=1e-4, atol=1e-5)
    # Adam normalises each gradient, so a rounding-level difference in a near-zero gradient can move a
    # weight by up to a step (lr 2.5e-5 in the warm-up): weights agree within a few steps.
    for name in plain_weights:
        torch.testing.assert_close(fast_weights[name], plain_weights[name], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_networks_keep_their_state_dict_keys_and_outputs():
    classic = random_unet()
    fast = prepare_network(copy.deepcopy(classic), speed(compile=True))
    assert fast.state_dict().keys() == classic.state_dict().keys()  # no `_orig_mod.` prefix
    t, x = inputs()
    torch.testing.assert_close(fast(t, x), classic(t, x), rtol=1e-4, atol=1e-5)


def test_sample_precision_bf16_autocasts_the_networks_and_stores_float32_samples():
    from types import SimpleNamespace

    from realuid.sampling import OneStepGenerator, draw_samples, one_step_inputs

    family = make_family("fm")
    teacher = random_unet()
    student = OneStepGenerator(family, random_unet(seed=1))
    generators = {"student_raw": lambda start, x0, y, noise: student(x0, y, noise)}  # the stage's calling form
    inputs = lambda start, n: one_step_inputs(family, start, n, seed=3, shape=(3, 8, 8), num_classes=0)  # noqa: E731
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = SimpleNamespace(batch_size=4, teacher_nfe=3, teacher_method="euler", seed=7, precision=precision)
        out[precision] = draw_samples(family, teacher, generators, inputs, 6, cfg)[0]
    for who, samples in out["bf16"].items():
        assert samples.dtype == torch.float32 and samples.shape == (6, 3, 8, 8)
        scale = out["fp32"][who].abs().max()
        difference = (samples - out["fp32"][who]).abs().max()
        assert 0 < difference <= 0.05 * scale  # bf16 did run (the samples differ), within its rounding


def test_teacher_loop_with_the_eager_options_follows_the_plain_one(tmp_path):
    from realuid.config import ModelConfig, OptimConfig, TrainTeacherConfig
    from realuid.training.teacher import train_teacher

    model = ModelConfig(arch="unet", hidden_dim=32, depth=1, time_embed_dim=16, channels=32, channel_mult=[1, 2],
                        num_res_blocks=1, attention_resolutions="4", num_heads=2, num_head_channels=-1, dropout=0.0,
                        class_cond=False)
    cfg = TrainTeacherConfig(model=model, optim=OptimConfig(lr=2e-3, betas=[0.9, 0.999], warmup_steps=2, grad_clip=1.0),
                             steps=3, batch_size=4, ema_decay=0.9, checkpoint_every_steps=3, log_every_steps=1, seed=0,
                             device="cpu")
    data = TrainData(x1=torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1)
    runs = {}
    for name, on in (("plain", SpeedConfig()), ("fast", speed(fused_adam=True, channels_last=True, attention="sdpa"))):
        runs[name] = train_teacher(make_family("fm"), data, SPEC, dataclasses.replace(cfg, speed=on), tmp_path / name,
                                   progress=False)
    assert runs["fast"].weights.keys() == runs["plain"].weights.keys()
    curves = {name: (tmp_path / name / "curves.csv").read_text().splitlines() for name in runs}
    losses = {name: torch.tensor([float(line.split(",")[1]) for line in lines[1:]]) for name, lines in curves.items()}
    assert curves["fast"][0] == curves["plain"][0] and curves["plain"][0].split(",")[1] == "loss"
    torch.testing.assert_close(losses["fast"], losses["plain"], rtol=1e-5, atol=1e-6)
    # Adam normalises each gradient: a rounding-level difference in a near-zero one moves a weight by a
    # fraction of a step (lr 2e-3 here), so weights agree to a quarter of one step.
    for key, value in runs["plain"].weights.items():
        torch.testing.assert_close(runs["fast"].weights[key], value, rtol=0, atol=5e-4)
