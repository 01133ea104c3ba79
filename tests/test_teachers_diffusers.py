"""An imported diffusers pipeline folder gives the field diffusers itself gives: the clean-data estimate
of its schedulers' ``step``, and samples that converge to its deterministic loops from the same noise.

Every folder is written by diffusers' own ``save_pretrained`` from a tiny UNet2DModel with random weights.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from helpers.diffusers_pipelines import SHAPE, save_pipeline
from realuid.matching import make_family
from realuid.models import build_model
from realuid.sampling import sample_ode
from realuid.teachers.diffusers import load_diffusers_teacher


def imported(folder):
    spec, state, record = load_diffusers_teacher(folder)
    net = build_model(spec)
    net.load_state_dict(state)
    return net.double().eval(), make_family(record["name"], **record["options"])


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_clean_data_estimate_equals_the_schedulers(tmp_path, scheduler_cls, beta_schedule, prediction_type):
    scheduler = scheduler_cls(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type,
                              clip_sample=False)
    unet = save_pipeline(tmp_path, scheduler, num_class_embeds=3)
    net, family = imported(tmp_path)
    scheduler.set_timesteps(1000)  # DDIM's step needs a schedule; the estimate uses ᾱ_k of the given k only
    gen = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 2])
    for k in (999, 731, 250, 17, 0):
        x_t = torch.randn(2, *SHAPE, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            theirs = scheduler.step(unet(x_t, k, class_labels=y).sample, k, x_t).pred_original_sample
            t = torch.full((2,), 1 - k / 999, dtype=torch.float64)
            ours = family.predict_x1(t, x_t, net(t, x_t, y))
        # diffusers forms sqrt(ᾱ) and 1 - ᾱ in float32 (its table's precision): agree to its rounding.
        scale = float(theirs.abs().max())
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * scale, msg=f"timestep {k}")


def ddim_loop(unet, scheduler, noise, steps):
    """diffusers' DDIM with eta = 0, written out: the scheduler's own step over trailing timesteps."""
    scheduler.set_timesteps(steps)
    x = noise
    for k in scheduler.timesteps:
        x = scheduler.step(unet(x, k).sample, k, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_our_sampler_converges_to_diffusers_ddim(tmp_path, prediction_type):
    # 200 training timesteps (betas up to 0.1, ᾱ_199 ~ 1e-5) keep DDIM over every table entry cheap.
    scheduler = DDIMScheduler(num_train_timesteps=200, beta_end=0.1, prediction_type=prediction_type,
                              clip_sample=False, timestep_spacing="trailing")  # trailing: DDIM starts at k = T - 1
    unet = save_pipeline(tmp_path, scheduler)
    net, family = imported(tmp_path)
    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # Our start state is source_state(x0, 0) = s(0) x0: give the x0 whose start state is DDIM's noise.
    x0 = noise / family.signal_noise(torch.zeros(1, dtype=torch.float64))[1]
    with torch.no_grad():
        # DDIM over every table timestep is diffusers' most accurate deterministic sample of this model.
        reference = ddim_loop(unet, scheduler, noise, 200)
        # Relative to the samples' size: a random network's samples are far from [-1, 1].
        errors = [float((sample_ode(family, net, x0, nfe=nfe, method="heun") - reference).abs().max()
                        / reference.abs().max()) for nfe in (9, 33, 129)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 8, errors


def test_flow_match_euler_equals_diffusers_stepping(tmp_path):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    unet = save_pipeline(tmp_path, scheduler)
    net, family = imported(tmp_path)
    assert family.name == "fm"
    steps = 20
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # Their sigmas on our grid: sigma = 1 - t for t = 0, 1/steps, ..., and the terminal 0 they append.
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist())
    x = noise
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x).prev_sample
        ours = sample_ode(family, net, noise, nfe=steps, method="euler")
    # The scheduler steps in float32 whatever the model's precision.
    torch.testing.assert_close(ours, x.double(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ the pipeline


@pytest.mark.slow  # one tiny dvc repro: about a minute on 2 cores
def test_dvc_repro_distils_a_diffusers_teacher(tmp_path):
    """A DDPM pipeline folder on the 8x8 digits through import, distill, sample and evaluate, under dvc;
    the generator is a diffusers UNet that load_generator rebuilds from its file alone."""
    import json
    import math

    from helpers.project import dvc_changed, dvc_reproduce, make_project, tiny_params
    from helpers.stages import STAGES

    from realuid import load_generator, load_teacher

    save_pipeline(tmp_path / "teacher", DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"))
    params = tiny_params(family__name="diffusion", train_teacher__import_checkpoint=str(tmp_path / "teacher"),
                         train_teacher__import_format="diffusers", features__steps=5, distill__steps=2,
                         distill__eval_samples=50, sample__n_samples=100, sample__batch_size=100,
                         sample__teacher_nfe=4, evaluate__kid_subset_size=50)
    project = make_project(tmp_path / "project", params)
    assert dvc_reproduce(project) == {s.name for s in STAGES}
    assert dvc_changed(project) == set()
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert all(math.isfinite(metrics[who]["fid"]) for who in ("teacher", "student"))
    teacher = load_teacher(project / "data/train_teacher/teacher.pt")
    generator = load_generator(project / "data/finetune/generator.pt")
    assert teacher.spec["arch"] == generator.spec["arch"] == "diffusers-unet2d"
    assert teacher.family.schedule == generator.family.schedule == "table"  # the scheduler's own ᾱ
    assert generator.family.t_src == pytest.approx(make_family(
        "diffusion", **{**teacher.family.options(), "generator_sigma": params["generator"]["sigma"]}).t_src)
    assert generator.sample(3).shape == (3, *SHAPE)


def test_the_native_pipeline_never_imports_diffusers():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, importlib\n"
            "for stage in ('prepare', 'features', 'train_teacher', 'distill', 'finetune', 'sample', 'evaluate', 'report'):\n"
            "    importlib.import_module('realuid.stages.' + stage)\n"
            "from realuid.models import build_model\n"
            "build_model({'arch': 'mlp', 'args': dict(dim=2, hidden_dim=8, depth=1, time_embed_dim=4, num_classes=0, dropout=0.0)})\n"
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'\n")
    src = Path(__file__).resolve().parents[1] / "src"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(src)})
