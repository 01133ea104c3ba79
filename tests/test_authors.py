"""Teachers from the authors' checkpoint layout: synthetic files of exactly that layout, and wrong ones."""

import pytest
import torch
from torchcfm.models.unet.unet import UNetModelWrapper

from realuid.authors import authors_model_spec, load_authors_teacher, teacher_from_checkpoint
from realuid.models import build_model

# The authors' teacher, built with torchcfm's own constructor (not ours), as their scripts do.
AUTHORS_UNET = dict(dim=(3, 32, 32), num_channels=128, num_res_blocks=2, channel_mult=[1, 2, 2, 2], num_heads=4,
                    num_head_channels=64, attention_resolutions="16", dropout=0.1)


class Arbitrary:
    """Any class: unpickling it would run code of the file's choosing."""


def randomised(net):
    """torchcfm zero-initialises the output conv; random weights make the output depend on every layer."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net.eval()


def authors_checkpoint(net) -> dict:
    """The authors' file layout. The EMA copy differs from the raw net only in the output bias (+1), so a
    test can tell which one was loaded; the other tensors are shared and torch.save stores them once."""
    raw = {k: v.clone() for k, v in net.state_dict().items()}  # not views of the module's parameters
    ema = dict(raw)
    ema["out.2.bias"] = raw["out.2.bias"] + 1.0
    return {"net_model": raw, "ema_models": {"0.999": ema, "0.9999": raw}, "step": 400000}


@pytest.fixture(scope="module")
def uncond():
    torch.manual_seed(0)
    return randomised(UNetModelWrapper(**AUTHORS_UNET))


@pytest.fixture(scope="module")
def batch():
    rng = torch.Generator().manual_seed(1)
    return torch.rand(2, generator=rng), torch.randn(2, 3, 32, 32, generator=rng)


def test_file_with_the_authors_layout_loads_and_reproduces_outputs(uncond, batch, tmp_path):
    path = tmp_path / "cifar10_uncond_FM_400000.pt"
    ckpt = authors_checkpoint(uncond)
    torch.save(ckpt, path)
    spec, state = load_authors_teacher(path)  # default: the 0.999 EMA copy
    assert spec == authors_model_spec(0)
    ours = build_model(spec).eval()
    ours.load_state_dict(state, strict=True)
    t, x = batch
    with torch.no_grad():
        # The 0.999 copy's output bias is larger by exactly 1 than the raw network's.
        torch.testing.assert_close(ours(t, x), uncond(t, x) + 1.0)
        # ema=None is the raw network: exactly the authors' model's output.
        ours.load_state_dict(teacher_from_checkpoint(ckpt, ema=None)[1], strict=True)
        assert torch.equal(ours(t, x), uncond(t, x))
    assert teacher_from_checkpoint(ckpt, ema=0.9999)[1]["out.2.bias"] is ckpt["net_model"]["out.2.bias"]


def test_class_conditional_checkpoint_infers_ten_classes(tmp_path, batch):
    torch.manual_seed(0)
    net = randomised(UNetModelWrapper(**AUTHORS_UNET, class_cond=True, num_classes=10))
    path = tmp_path / "cifar10_cond_FM_400000.pt"
    torch.save({"net_model": net.state_dict(), "ema_models": {"0.999": net.state_dict()}}, path)
    spec, state = load_authors_teacher(path)
    assert spec == authors_model_spec(10) and spec["args"]["num_classes"] == 10
    ours = build_model(spec).eval()
    ours.load_state_dict(state, strict=True)
    t, x = batch
    y = torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.equal(ours(t, x, y), net(t, x, y))
    with pytest.raises(ValueError, match="num_classes=5 was asked for, but the checkpoint has a 10-class"):
        load_authors_teacher(path, num_classes=5)
    # And the same mistake the other way round, on the unconditional layout.
    with pytest.raises(ValueError, match="no label embedding"):
        teacher_from_checkpoint({"net_model": {k: v for k, v in state.items() if k != "label_emb.weight"}},
                                ema=None, num_classes=10)


def test_data_parallel_prefix_and_the_authors_gan_head_are_handled(uncond):
    raw = uncond.state_dict()
    wrapped = {f"module.{k}": v for k, v in raw.items()}
    # Their model class always carries the conv GAN head; a teacher never uses it.
    wrapped["module.cls_pred_branch.0.weight"] = torch.zeros(256, 256, 2, 2)
    wrapped["module.cls_pred_branch.6.bias"] = torch.zeros(1)
    spec, state = teacher_from_checkpoint({"ema_models": {"0.999": wrapped}})
    assert set(state) == set(raw) and all(state[k] is raw[k] for k in raw)


def test_64_pixel_layout_is_recognised():
    spec = authors_model_spec(0, image_size=64)
    with torch.device("meta"):
        state = build_model(spec).state_dict()
    assert teacher_from_checkpoint({"net_model": state}, ema=None)[0] == spec


def test_wrong_layout_fails_loudly_with_the_keys(uncond):
    raw = uncond.state_dict()
    missing = {k: v for k, v in raw.items() if k != "input_blocks.4.1.qkv.weight"}
    with pytest.raises(ValueError, match=r"1 missing: input_blocks\.4\.1\.qkv\.weight"):
        teacher_from_checkpoint({"net_model": missing}, ema=None)
    extra = dict(raw, **{"extra_head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected: extra_head\.weight"):
        teacher_from_checkpoint({"net_model": extra}, ema=None)
    # A 64-channel UNet: same names, other shapes; every mismatch is reported, not silently skipped.
    narrow = UNetModelWrapper(**dict(AUTHORS_UNET, num_channels=64)).state_dict()
    with pytest.raises(ValueError, match=r"with another shape: .*checkpoint \(64, 3, 3, 3\), model \(128, 3, 3, 3\)"):
        teacher_from_checkpoint({"net_model": narrow}, ema=None, image_size=32)


def test_bad_files_and_choices_are_clear_errors(uncond, tmp_path):
    with pytest.raises(ValueError, match=r"EMA decay '0\.9996' is not in the checkpoint; it holds \['0\.999'\]"):
        teacher_from_checkpoint({"ema_models": {"0.999": uncond.state_dict()}}, ema="0.9996")
    with pytest.raises(ValueError, match="expected a dict with 'ema_models'"):
        teacher_from_checkpoint({"state_dict": {}})
    with pytest.raises(ValueError, match="no 'net_model'"):
        teacher_from_checkpoint({"ema_models": {"0.999": {}}}, ema=None)
    with pytest.raises(FileNotFoundError):
        load_authors_teacher(tmp_path / "absent.pt")
    # A pickled object that is not plain tensors and containers is refused by weights_only loading,
    # in one line that does not suggest the one thing never to do.
    bad = tmp_path / "pickled.pt"
    torch.save({"net_model": {"x": torch.zeros(1)}, "ema_models": {}, "extra": Arbitrary()}, bad)
    with pytest.raises(ValueError, match="contains objects other than tensors") as refused:
        load_authors_teacher(bad)
    assert "\n" not in str(refused.value) and "weights_only" not in str(refused.value)


@pytest.mark.parametrize("kwargs, match", [(dict(num_classes=-1), "num_classes"), (dict(image_size=40), "image_size"),
                                           (dict(dropout=1.0), "dropout")])
def test_spec_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        authors_model_spec(**kwargs)


def test_train_teacher_stage_imports_the_authors_file(uncond, tmp_path, monkeypatch):
    """`train_teacher.import_checkpoint` skips training and writes the imported weights as the teacher."""
    import numpy as np
    import yaml
    from pathlib import Path

    from realuid import load_teacher
    from realuid.stages import train_teacher

    root = Path(__file__).resolve().parents[1]
    ckpt = tmp_path / "authors.pt"
    torch.save(authors_checkpoint(uncond), ckpt)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=images)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"].update(source="file", path=str(tmp_path / "images.npz"), test_fraction=0.25)
    params["train_teacher"].update(import_checkpoint=str(ckpt), import_format="authors", import_ema="0.9999")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    from realuid.stages import prepare

    assert prepare.cli(["--out", "data/prepare"]) == 0
    assert train_teacher.cli(["--data", "data/prepare/train.h5", "--out", "data/train_teacher"]) == 0
    teacher = load_teacher(tmp_path / "data/train_teacher/teacher.pt")
    t, x = torch.rand(2), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(t, x), uncond(t, x), rtol=0, atol=0)  # "0.9999" is the raw copy

    params["family"]["name"] = "si"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert train_teacher.cli(["--data", "data/prepare/train.h5", "--out", "data/other"]) == 1
    assert not (tmp_path / "data/other").exists()
