"""torchcfm's checkpoints: the imported teacher computes and samples what torchcfm's own model does."""

import copy

import pytest
import torch
from torchcfm.models.unet.unet import UNetModelWrapper

import realuid
from realuid.api import Teacher
from realuid.checkpoints import CheckpointError
from realuid.config import ModelConfig, build
from realuid.matching import make_family
from realuid.models import build_model
from realuid.sampling import sample_ode
from realuid.teachers.torchcfm import load_torchcfm_teacher

SHAPE = (3, 8, 8)
# torchcfm's CIFAR-10 architecture, shrunk: two levels, attention at 4x4, heads of 32 channels.
TORCHCFM_ARGS = dict(dim=SHAPE, num_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions="4",
                     num_heads=4, num_head_channels=32)


def model_cfg(**changes) -> ModelConfig:
    """``train_teacher.model`` describing the UNet of TORCHCFM_ARGS."""
    values = dict(arch="unet", hidden_dim=8, depth=1, time_embed_dim=8, channels=32, channel_mult=[1, 2],
                  num_res_blocks=1, attention_resolutions="4", num_heads=4, num_head_channels=32, dropout=0.0,
                  class_cond=False, class_dropout=0.0)
    return build(ModelConfig, {**values, **changes})


def torchcfm_checkpoint(path, *, num_classes=0, ddp=False, **changes):
    """A torchcfm-layout file of a random-weight UNetModelWrapper, with an EMA copy of other weights; returns
    (raw model, EMA model) in eval mode."""
    torch.manual_seed(0)
    args = {**TORCHCFM_ARGS, **changes}
    net = UNetModelWrapper(**args, class_cond=num_classes > 0, num_classes=num_classes or 1000).eval()
    ema = copy.deepcopy(net)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))  # random weights everywhere: no zero-initialised output
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prefix = "module." if ddp else ""
    state = lambda m: {prefix + k: v for k, v in m.state_dict().items()}  # noqa: E731
    opt = torch.optim.Adam(net.parameters())
    torch.save({"net_model": state(net), "ema_model": state(ema), "sched": {}, "optim": opt.state_dict(), "step": 7},
               path)
    return net, ema


def imported(path, ema, cfg=None, num_classes=0):
    spec, state = load_torchcfm_teacher(path, ema, cfg or model_cfg(), SHAPE, num_classes)
    net = build_model(spec)
    net.load_state_dict(state)
    return spec, net.eval()


@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("ema", [None, "0.9999"])
def test_imported_network_computes_torchcfm_output(tmp_path, ema, num_classes):
    raw, averaged = torchcfm_checkpoint(tmp_path / "cfm.pt", num_classes=num_classes)
    _, ours = imported(tmp_path / "cfm.pt", ema, num_classes=num_classes)
    theirs = raw if ema is None else averaged
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(5, *SHAPE, generator=gen), torch.rand(5, generator=gen)
    y = torch.randint(0, num_classes, (5,), generator=gen) if num_classes else None
    with torch.no_grad():
        expected = theirs(t, x, y=y)
        assert not torch.allclose(expected, (averaged if ema is None else raw)(t, x, y=y))  # the copies differ
        torch.testing.assert_close(ours(t, x, y), expected, rtol=0, atol=0)


def test_euler_sampling_matches_an_euler_integration_of_the_torchcfm_model(tmp_path):
    _, averaged = torchcfm_checkpoint(tmp_path / "cfm.pt", num_classes=3)
    spec, ours = imported(tmp_path / "cfm.pt", "ema", num_classes=3)
    x0 = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    steps = 6
    with torch.no_grad():
        x = x0.clone()
        for k in range(steps):  # dx/dt = v(t, x) from t = 0 (noise) to 1 (data), torchcfm's convention
            t = torch.full((4,), k / steps)
            x = x + averaged(t, x, y=y) / steps
        sampled = sample_ode(make_family("fm"), ours, x0, nfe=steps, method="euler", y=y)
    torch.testing.assert_close(sampled, x, rtol=1e-5, atol=1e-5)
    # The same through the public teacher, started from the same noise.
    teacher = Teacher(make_family("fm"), ours, spec)
    torch.testing.assert_close(teacher.sample(4, nfe=steps, method="euler", labels=y, noise=x0, batch_size=3), x,
                               rtol=1e-5, atol=1e-5)


def test_an_imported_teacher_distils_from_python(tmp_path):
    torchcfm_checkpoint(tmp_path / "cfm.pt")
    spec, net = imported(tmp_path / "cfm.pt", "ema")
    images = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    generator = realuid.distill(Teacher(make_family("fm"), net, spec), images, alpha=0.9, beta=0.95,
                                out=tmp_path / "run", steps=2, batch_size=4, device="cpu", progress=False)
    noise = torch.randn(3, *SHAPE)
    assert torch.equal(realuid.load_generator(tmp_path / "run/generator.pt").sample(3, noise=noise),
                       generator.sample(3, noise=noise))


def test_arguments_come_from_the_weights_when_the_params_do_not_fit(tmp_path):
    raw, _ = torchcfm_checkpoint(tmp_path / "cfm.pt", ddp=True, num_channels=64, channel_mult=[1, 1, 2],
                                 num_res_blocks=2, attention_resolutions="4,2")
    spec, ours = imported(tmp_path / "cfm.pt", None)  # params: 32 channels, [1, 2], 1 block, attention at 4
    args = spec["args"]
    assert (args["channels"], args["channel_mult"], args["num_res_blocks"]) == (64, [1, 1, 2], 2)
    assert args["attention_resolutions"] == "4,2" and (args["num_heads"], args["num_head_channels"]) == (4, 32)
    x, t = torch.randn(2, *SHAPE), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(t, x), raw(t, x), rtol=0, atol=0)


def test_missing_entry_is_one_clear_error(tmp_path):
    raw, _ = torchcfm_checkpoint(tmp_path / "cfm.pt")
    torch.save({"net_model": raw.state_dict()}, tmp_path / "raw_only.pt")
    with pytest.raises(CheckpointError, match="no 'ema_model' entry; choose train_teacher.import_ema: none"):
        load_torchcfm_teacher(tmp_path / "raw_only.pt", "0.9999", model_cfg(), SHAPE, 0)
    torch.save({"model": raw.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a torchcfm checkpoint: expected a dict with 'net_model'"):
        load_torchcfm_teacher(tmp_path / "other.pt", None, model_cfg(), SHAPE, 0)


def test_weights_that_fit_no_unet_name_the_keys_that_differ(tmp_path):
    torchcfm_checkpoint(tmp_path / "cfm.pt", use_scale_shift_norm=True)  # an option our UNet does not have
    with pytest.raises(CheckpointError, match=r"cfm.pt: the weights do not fit .*with another shape: "
                                              r"input_blocks.1.0.emb_layers.1.bias"):
        load_torchcfm_teacher(tmp_path / "cfm.pt", None, model_cfg(), SHAPE, 0)


def test_classes_and_image_channels_are_checked(tmp_path):
    torchcfm_checkpoint(tmp_path / "cfm.pt", num_classes=3)
    with pytest.raises(CheckpointError, match="params ask for no classes .* the checkpoint has a 3-class label"):
        load_torchcfm_teacher(tmp_path / "cfm.pt", None, model_cfg(), SHAPE, 0)
    with pytest.raises(CheckpointError, match="input convolution takes 3 channels, the data have 1"):
        load_torchcfm_teacher(tmp_path / "cfm.pt", None, model_cfg(channels=64), (1, 8, 8), 3)


def test_a_file_that_would_run_code_is_refused(tmp_path):
    torch.save({"net_model": {"w": torch.zeros(1)}, "step": slice(1)}, tmp_path / "code.pt")  # not a weights-only object
    with pytest.raises(CheckpointError, match="would run code when loaded"):
        load_torchcfm_teacher(tmp_path / "code.pt", None, model_cfg(), SHAPE, 0)


@pytest.mark.slow  # a tiny pipeline run: about a minute on 2 cores
def test_a_torchcfm_teacher_runs_through_the_pipeline(tmp_path):
    """`train_teacher.import_format: torchcfm` under `dvc repro` on the 8x8 digits: the teacher the pipeline
    writes computes torchcfm's EMA model, and every later stage runs on it."""
    import json

    from helpers.project import make_project, sh, tiny_params

    # The UNet of the committed params on digits: two levels of 32 channels, one block each, attention only in
    # the middle block with 4 heads (heads split the same weights, so they must match the params: the weights
    # cannot tell). torchcfm cannot parse an empty attention list: "16" puts attention at no level of 8x8.
    _, ema = torchcfm_checkpoint(tmp_path / "torchcfm.pt", dim=(1, 8, 8), attention_resolutions="16",
                                 num_heads=4, num_head_channels=-1)
    params = tiny_params(train_teacher__import_checkpoint=str(tmp_path / "torchcfm.pt"),
                         train_teacher__import_format="torchcfm", train_teacher__import_ema="0.9999")
    project = make_project(tmp_path / "project", params)
    sh(project, "dvc", "repro")
    teacher = realuid.load_teacher(project / "data/train_teacher/teacher.pt")
    t, x = torch.rand(4), torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(teacher(t, x), ema(t, x), rtol=0, atol=0)
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert {"teacher", "student"} <= set(metrics)
    assert sh(project, "dvc", "status").stdout.strip().endswith("up to date.")
