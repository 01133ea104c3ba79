"""RealUID + GAN in the trainer: off changes nothing, on trains the head and reaches the generator."""

import dataclasses

import pytest
import torch

from realuid.config import DistillConfig, GanConfig, ModelConfig, OptimConfig
from realuid.matching import make_family
from realuid.models import build_model, model_spec
from realuid.training.batches import TrainData
from realuid.training.distillation import RealUID, distill

MODEL = ModelConfig(arch="auto", hidden_dim=32, depth=1, time_embed_dim=16, channels=32, channel_mult=[1, 2],
                    num_res_blocks=1, attention_resolutions="", num_heads=1, num_head_channels=-1,
                    dropout=0.0, class_cond=False)
OPTIM = OptimConfig(lr=2e-3, betas=[0.0, 0.999], warmup_steps=0, grad_clip=0.0)
ON = GanConfig(enabled=True, gen_coef=1.0, disc_coef=3.0)
DISTILL = DistillConfig(steps=4, fake_updates_per_generator_update=2, batch_size=32, generator_optim=OPTIM,
                        fake_optim=OPTIM, fake_init="teacher", ema_decays=[0.9], checkpoint_every_steps=2,
                        log_every_steps=2, seed=5, device="cpu", precision="fp32")


def setup(family_name="fm", shape=(2,), classes=0, gan=ON, precision="fp32", alpha=0.9, beta=0.95):
    family = make_family(family_name)
    spec = model_spec(dataclasses.replace(MODEL, class_cond=bool(classes)), shape, classes)
    torch.manual_seed(0)
    teacher = build_model(spec)
    with torch.no_grad():
        for p in teacher.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    rng = torch.Generator().manual_seed(0)
    x1 = torch.rand(64, *shape, generator=rng) * 2 - 1
    y = torch.randint(0, classes, (64,), generator=rng) if classes else None
    x0 = (x1 + 0.3 * torch.randn(x1.shape, generator=rng)) if family.paired else None
    data = TrainData(x1, y, x0)
    cfg = dataclasses.replace(DISTILL, gan=gan, precision=precision)
    uid = RealUID(family, teacher, spec, cfg, alpha=alpha, beta=beta, device=torch.device("cpu"))
    return family, teacher, spec, cfg, data, uid


def batch_of(data, n=32):
    return TrainData(data.x1[:n], None if data.y is None else data.y[:n], None if data.x0 is None else data.x0[:n])


def test_gan_off_is_the_plain_trainer():
    *_, data, off = setup(gan=dataclasses.replace(ON, enabled=False))
    assert off.disc_head is None and "disc_head" not in off.state_dict()
    assert len(off.fake_params) == len(list(off.fake.parameters()))


@pytest.mark.parametrize("family_name, alpha, beta, classes", [("fm", 0.9, 0.95, 0), ("fm", 1.0, 1.0, 3),
                                                                ("bridge", 1.0, 0.9, 0), ("si", 0.92, 0.94, 0)])
def test_fake_step_trains_head_and_encoder_on_the_gan_term(family_name, alpha, beta, classes):
    *_, data, uid = setup(family_name, classes=classes, alpha=alpha, beta=beta)
    head_before = {k: v.clone() for k, v in uid.disc_head.state_dict().items()}
    loss, norm = uid.fake_step(batch_of(data), torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and torch.isfinite(norm)
    assert any(not torch.equal(head_before[k], v) for k, v in uid.disc_head.state_dict().items())
    # With disc_coef = 0 the fake model's update differs: the GAN term reaches the encoder.
    *_, data0, uid0 = setup(family_name, classes=classes, alpha=alpha, beta=beta,
                            gan=dataclasses.replace(ON, disc_coef=0.0))
    uid0.fake_step(batch_of(data0), torch.Generator().manual_seed(1))
    assert not torch.equal(uid.fake.blocks[0].fc1.weight, uid0.fake.blocks[0].fc1.weight)


def test_generator_step_gets_the_gan_gradient_and_freezes_the_head():
    *_, data, uid = setup()
    *_, data0, uid0 = setup(gan=dataclasses.replace(ON, gen_coef=0.0))
    head = {k: v.clone() for k, v in uid.disc_head.state_dict().items()}
    fake = {k: v.clone() for k, v in uid.fake.state_dict().items()}
    loss, norm = uid.generator_step(batch_of(data), torch.Generator().manual_seed(2))
    loss0, norm0 = uid0.generator_step(batch_of(data0), torch.Generator().manual_seed(2))
    # The fake model starts as the teacher, so the RealUID term alone is exactly 0: only the GAN term moves it.
    assert loss0 == 0 and norm0 == 0
    assert torch.isfinite(loss) and loss > 0 and norm > 0
    assert all(torch.equal(head[k], v) for k, v in uid.disc_head.state_dict().items())
    assert all(torch.equal(fake[k], v) for k, v in uid.fake.state_dict().items())
    assert all(p.requires_grad for p in uid.disc_head.parameters())  # restored for the next fake step
    assert not torch.equal(uid.generator.net.inp.weight, uid0.generator.net.inp.weight)


def test_unet_bf16_autocast_with_gan_on_cpu():
    *_, data, uid = setup(shape=(1, 8, 8), precision="bf16")
    f, _ = uid.fake_step(batch_of(data, 4), torch.Generator().manual_seed(1))
    g, _ = uid.generator_step(batch_of(data, 4), torch.Generator().manual_seed(2))
    assert torch.isfinite(f) and torch.isfinite(g)
    assert all(p.dtype == torch.float32 for p in uid.disc_head.parameters())


def test_distill_with_gan_resumes_bit_identically(tmp_path):
    family, teacher, spec, cfg, data, _ = setup()
    straight = distill(family, data, teacher, spec, cfg, tmp_path / "a", alpha=0.9, beta=0.95, progress=False)
    distill(family, data, teacher, spec, cfg, tmp_path / "b", alpha=0.9, beta=0.95, progress=False, stop_after=2)
    resumed = distill(family, data, teacher, spec, cfg, tmp_path / "b", alpha=0.9, beta=0.95, progress=False)
    assert all(torch.equal(straight.weights[k], v) for k, v in resumed.weights.items())


@pytest.mark.parametrize("family_name, shape", [("fm", (2,)), ("bridge", (2,)), ("si", (1, 8, 8))])
def test_a_generated_sample_and_its_real_partner_share_time_and_noise(family_name, shape):
    *_, data, uid = setup(family_name, shape=shape)
    batch = batch_of(data, 6)
    d = uid._draws(batch, torch.Generator().manual_seed(3))
    assert d.gan_t.shape == (6,)  # one draw per pair, not per sample
    assert (d.gan_noise is None) == (family_name == "fm") and (d.gan_noise is None or d.gan_noise.shape == (6, *shape))
    # Identical samples in both halves must give identical logits: they sit at one point of the path.
    logits_gen, logits_data = uid._gan_logits(torch.cat([d.x1, d.x1]), None, d).chunk(2)
    assert torch.equal(logits_gen, logits_data)
    assert not torch.equal(logits_gen, logits_gen.roll(1))  # distinct pairs still get distinct times
