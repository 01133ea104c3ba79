"""Strict params loading: the committed params.yaml loads; every kind of mistake names its key."""

import copy
from pathlib import Path

import pytest
import yaml

from realuid.config import ConfigError, OptimConfig, ema_key, load_params

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def edited(**changes) -> dict:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def test_committed_params_load():
    params = load_params(ROOT / "params.yaml")
    assert 0 < params.alpha <= 1 and 0 < params.beta <= 1
    assert params.family.name in ("fm", "diffusion", "si", "bridge")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bogus": 1}, "unknown key bogus"),
        ({"distill__bogus": 1}, "unknown key distill.bogus"),
        ({"train_teacher__model__bogus": 1}, "unknown key train_teacher.model.bogus"),
        ({"alpha": KeyError}, "missing key alpha"),
        ({"distill__generator_optim__lr": KeyError}, "missing key distill.generator_optim.lr"),
        ({"alpha": 1.5}, "alpha: must be <= 1"),
        ({"alpha": 0.0}, "alpha: must be > 0"),
        ({"beta": "high"}, "beta: expected a number"),
        ({"alpha": True}, "alpha: expected a number"),
        ({"distill__steps": 10.5}, "distill.steps: expected an integer"),
        ({"distill__steps": 0}, "distill.steps: must be > 0"),
        ({"family__name": "gan"}, "family.name: 'gan' is not one of"),
        ({"prepare__download": "yes"}, "prepare.download: expected true or false"),
        ({"distill__ema_decays": [0.9, 1.0]}, "distill.ema_decays"),
        ({"distill__fake_optim__betas": [0.9]}, "distill.fake_optim.betas"),
        ({"sample__generator_ema": "0.5"}, "sample.generator_ema"),
        ({"sample__generator_steps": [2, 4]}, "sample.generator_steps: expected step counts increasing from 1"),
        ({"sample__generator_steps": [1, 1]}, "sample.generator_steps: expected step counts increasing from 1"),
        ({"sample__guidance_scale": -1.0}, "sample.guidance_scale: must be >= 0"),
        ({"distill__device": "tpu"}, "distill.device"),
        ({"train_teacher__model__channel_mult": [1, 0]}, "train_teacher.model.channel_mult"),
    ],
)
def test_mistakes_name_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_params(write(tmp_path, edited(**changes)))


def test_bridge_needs_pairing_and_its_sde(tmp_path):
    with pytest.raises(ConfigError, match="paired data"):
        load_params(write(tmp_path, edited(family__name="bridge", prepare__pairing="none", sample__teacher_method="sde")))
    with pytest.raises(ConfigError, match="sample.teacher_method"):
        load_params(write(tmp_path, edited(family__name="bridge", prepare__pairing="noise")))
    load_params(write(tmp_path, edited(family__name="bridge", prepare__pairing="noise", sample__teacher_method="sde")))


def test_generator_noise_needs_a_noisy_bridge_and_other_families_ignore_it(tmp_path):
    bridge = dict(family__name="bridge", prepare__pairing="noise", sample__teacher_method="sde")
    assert load_params(write(tmp_path, edited(**bridge, generator__t=0.1))).generator.t == 0.1
    noiseless = {**bridge, "family__sigma": 0.0, "sample__teacher_method": "euler"}
    with pytest.raises(ConfigError, match="generator.t: a bridge with family.sigma = 0"):
        load_params(write(tmp_path, edited(**noiseless, generator__t=0.1)))
    with pytest.raises(ConfigError, match="generator.t: must be < 0.5"):
        load_params(write(tmp_path, edited(**bridge, generator__t=0.5)))
    # Another family's generator key is not in effect: accepted, and it places nothing.
    params = load_params(write(tmp_path, edited(generator__t=0.1)))
    assert params.family.name == "fm" and params.generator.options("fm") == {}
    assert params.generator.options("bridge") == {"generator_t": 0.1}
    assert params.generator.options("diffusion") == {"generator_sigma": params.generator.sigma}


def test_not_a_mapping_and_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(path)
    path.write_text("alpha: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    assert load_params(write(tmp_path, edited(alpha=1))).alpha == 1.0


def test_ema_key_is_canonical():
    assert ema_key(0.999) == ema_key("0.999") == "0.999"


@pytest.mark.parametrize("changes, message", [
    ({"distill__eval_every_steps": -1}, "distill.eval_every_steps: must be >= 0"),
    ({"distill__eval_samples": 1}, "distill.eval_samples: must be >= 2"),
    ({"evaluate__fid_blocks": 0}, "evaluate.fid_blocks: must be >= 1"),
    ({"evaluate__fid_blocks": 3, "sample__n_samples": 5000},
     "evaluate.fid_blocks: 3 blocks do not split sample.n_samples 5000"),
    ({"evaluate__fid_blocks": BASE["sample"]["n_samples"]}, "need at least 2 samples per block"),
    ({"distill__keep_best": True, "distill__eval_every_steps": 0}, "distill.keep_best: the best copy is chosen"),
    ({"sample__generator_ema": "best"}, "sample.generator_ema: 'best' needs distill.keep_best"),
    ({"sample__generator_ema": "best", "distill__eval_every_steps": 0}, "'best' needs distill.keep_best"),
])
def test_in_training_evaluation_and_fid_block_settings_are_checked(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_params(write(tmp_path, edited(**changes)))


def test_best_copy_is_accepted_with_keep_best(tmp_path):
    params = load_params(write(tmp_path, edited(sample__generator_ema="best", distill__keep_best=True)))
    assert params.sample.generator_ema == "best" and params.distill.eval_every_steps > 0



OPTIM_BLOCKS = ["train_teacher.optim", "distill.generator_optim", "distill.fake_optim"]


def loaded_block(params, dotted: str):
    for part in dotted.split("."):
        params = getattr(params, part)
    return params


@pytest.mark.parametrize("where", OPTIM_BLOCKS)
def test_optimizer_decay_is_read_and_checked(tmp_path, where):
    key = where.replace(".", "__") + "__decay"
    written = BASE
    for part in where.split("."):
        written = written[part]
    assert loaded_block(load_params(ROOT / "params.yaml"), where).decay == written["decay"]  # as the file says
    for value in ("constant", "cosine"):
        assert loaded_block(load_params(write(tmp_path, edited(**{key: value}))), where).decay == value
    # Params files list every key, this one too; an optimizer config built in code defaults to constant.
    with pytest.raises(ConfigError, match=f"missing key {where}.decay"):
        load_params(write(tmp_path, edited(**{key: KeyError})))
    assert OptimConfig(lr=1e-3, betas=[0.9, 0.999], warmup_steps=0, grad_clip=0.0).decay == "constant"
    with pytest.raises(ConfigError, match=rf"{where.replace('.', '[.]')}[.]decay: 'linear' is not one of"):
        load_params(write(tmp_path, edited(**{key: "linear"})))


@pytest.mark.parametrize("source, arch, fit", [
    ("digits", "mlp", "unet"), ("cifar10", "mlp", "unet"), ("toy", "unet", "mlp"),
])
def test_a_backbone_for_the_other_kind_of_data_is_a_config_error(tmp_path, source, arch, fit):
    with pytest.raises(ConfigError, match=rf"^train_teacher[.]model[.]arch: '{arch}' is a backbone .* "
                                          rf"prepare[.]source '{source}' .*; use '{fit}' \(or 'auto'\)$"):
        load_params(write(tmp_path, edited(prepare__source=source, train_teacher__model__arch=arch)))


@pytest.mark.parametrize("changes", [
    {"prepare__source": "digits", "train_teacher__model__arch": "auto"},
    {"prepare__source": "toy", "train_teacher__model__arch": "auto"},
    {"prepare__source": "digits", "train_teacher__model__arch": "unet"},
    {"prepare__source": "toy", "train_teacher__model__arch": "mlp"},
    # A user file's kind is known once it is read: the teacher stage checks it.
    {"prepare__source": "file", "prepare__path": "x.npz", "train_teacher__model__arch": "mlp"},
    {"prepare__source": "file", "prepare__path": "x.npz", "train_teacher__model__arch": "unet"},
    # An imported teacher brings its own network.
    {"prepare__source": "toy", "train_teacher__model__arch": "unet", "train_teacher__import_checkpoint": "a.pt",
     "train_teacher__import_format": "authors"},
], ids=["digits-auto", "toy-auto", "digits-unet", "toy-mlp", "file-mlp", "file-unet", "imported"])
def test_backbones_that_fit_or_cannot_be_judged_pass_the_config_check(tmp_path, changes):
    params = load_params(write(tmp_path, edited(**changes)))
    assert params.train_teacher.model.arch == changes["train_teacher__model__arch"]


def test_the_toy_config_is_the_former_default_on_points():
    toy = load_params(ROOT / "configs/toy.yaml")
    assert toy.prepare.source == "toy" and toy.train_teacher.model.arch in ("auto", "mlp")
    default = load_params(ROOT / "params.yaml")
    assert default.prepare.source in ("digits", "cifar10") and default.train_teacher.model.arch in ("auto", "unet")


def test_with_changes_merges_nested_sections_and_leaves_its_inputs_alone():
    from realuid.config import with_changes

    settings = {"steps": 10, "optim": {"lr": 1e-3, "betas": [0.9, 0.999]}, "gan": {"enabled": False}}
    changes = {"optim": {"betas": (0.0, 0.99)}, "steps": 20}
    before = copy.deepcopy((settings, changes))
    assert with_changes(settings, changes) == {"steps": 20, "optim": {"lr": 1e-3, "betas": [0.0, 0.99]},
                                               "gan": {"enabled": False}}
    assert (settings, changes) == before


def test_label_dropout_and_guidance_settings_are_checked_across_sections(tmp_path):
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    cases = [({"class_cond": False, "class_dropout": 0.1}, 1.0, "class_dropout: label dropout needs class_cond"),
             ({"class_cond": True, "class_dropout": 0.0}, 2.0, "distill.guidance_scale"),
             ({"class_cond": True, "class_dropout": 0.1}, 2.0, None)]
    for model, scale, message in cases:
        params = copy.deepcopy(base)
        params["train_teacher"]["model"].update(model)
        params["distill"]["guidance_scale"] = scale
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        if message is None:
            assert load_params(path).distill.guidance_scale == scale
        else:
            with pytest.raises(ConfigError, match=message):
                load_params(path)
