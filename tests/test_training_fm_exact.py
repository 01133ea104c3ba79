"""The teacher loop learns the right field: flow matching on a Gaussian mixture, whose velocity is exact."""


import torch

from realuid.analytic import exact_fm_velocity, gmm8
from realuid.config import ModelConfig, OptimConfig, TrainTeacherConfig
from realuid.matching import make_family
from realuid.models import build_model, model_spec
from realuid.training.batches import TrainData
from realuid.training.teacher import train_teacher

MODEL = ModelConfig(arch="mlp", hidden_dim=64, depth=2, time_embed_dim=16, channels=32, channel_mult=[1],
                    num_res_blocks=1, attention_resolutions="", num_heads=1, num_head_channels=-1,
                    dropout=0.0, class_cond=False)
TEACHER = TrainTeacherConfig(model=MODEL, optim=OptimConfig(lr=3e-3, betas=[0.9, 0.999], warmup_steps=20,
                                                            grad_clip=1.0),
                             steps=400, batch_size=256, ema_decay=0.99, checkpoint_every_steps=400,
                             log_every_steps=100, seed=0, device="cpu")


def field_error(model, mixture, n=4000, seed=1) -> float:
    """Mean squared error ``E ||f(t, x_t) - v*(t, x_t)||^2`` on fresh path samples, t ~ U[0, 1)."""
    rng = torch.Generator().manual_seed(seed)
    x1 = mixture.sample(n, rng=rng)
    x0 = torch.randn(n, 2, generator=rng)
    t = torch.rand(n, generator=rng)
    x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
    with torch.no_grad():
        return float(((model(t, x_t) - exact_fm_velocity(mixture, t, x_t)) ** 2).sum(1).mean())


def test_teacher_approaches_the_exact_velocity(tmp_path):
    mixture, family = gmm8(), make_family("fm")
    data = TrainData(mixture.sample(8192, rng=torch.Generator().manual_seed(0)))
    spec = model_spec(MODEL, (2,), 0)
    torch.manual_seed(TEACHER.seed)  # train_teacher starts from these same weights
    untrained = build_model(spec)

    result = train_teacher(family, data, spec, TEACHER, tmp_path, progress=False)
    trained = build_model(spec)
    trained.load_state_dict(result.state_dict(TEACHER.ema_decay))

    before, after = field_error(untrained, mixture), field_error(trained, mixture)
    # The regression target x1 - x0 is noisy (E||x1 - x0 - v*||^2 ~ 1); what matters is the distance to
    # its conditional mean, which the loop must shrink several-fold within a few hundred steps.
    assert after < 0.2 * before, (before, after)
    # Measured with these seeds: ~1.08 before, ~0.10 after.
    assert after < 0.15, after
