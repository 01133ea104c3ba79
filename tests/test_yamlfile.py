"""Every YAML file of the project is read as DVC reads it (ruamel.yaml, safe YAML 1.2).

The reference is DVC itself, run here: ``dvc.api.params_show()`` on a DVC repository in a temporary
folder, and the function ``dvc exp run -S`` writes params with (``dvc.utils.hydra.apply_overrides``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml

from realuid.config import ConfigError, load_params
from realuid.yamlfile import parse_yaml, read_yaml

ROOT = Path(__file__).resolve().parents[1]

# Spellings a person types or DVC writes; those marked * read differently in YAML 1.1 (PyYAML).
SPELLINGS = [
    "5e-4",  # *
    "1e-3",  # *
    "1E-3",  # *
    "1e3",  # *
    "-2.5e-05",
    ".5",
    "1.",
    "-.5",
    "+1",
    "0.0005",
    "3",
    "0o17",  # *
    "0x1F",
    "1_000",
    ".inf",
    "-.inf",
    "true",
    "True",
    "TRUE",
    "false",
    "off",  # *
    "on",  # *
    "yes",  # *
    "no",  # *
    "y",
    "~",
    "null",
    "",
    "'5e-4'",
    '"1e-3"',
    "'true'",
    "some text",
    "[5e-4, 1., off, ~]",  # *
    "{lr: 1e-3, on: yes}",  # *
    "\n    - 0.9\n    - 1e-3",  # *
]


def spellings_file(folder: Path) -> Path:
    lines = ["table:"] + [f"  k{i}: {text}" for i, text in enumerate(SPELLINGS)]
    path = folder / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def dvc_params(folder: Path) -> dict:
    """What DVC reads from ``folder/params.yaml``, through its public API."""
    import dvc.api
    from dvc.repo import Repo

    (folder / "dvc.yaml").write_text("stages:\n  use:\n    cmd: 'true'\n    params: [table]\n")
    Repo.init(str(folder), no_scm=True)
    return dvc.api.params_show(repo=str(folder))


def test_every_spelling_reads_as_dvc_reads_it(tmp_path):
    path = spellings_file(tmp_path)
    ours = read_yaml(path)
    assert ours == dvc_params(tmp_path)
    # The table is worth its name: the YAML 1.1 reader the stages used before disagrees on those marked *.
    older = yaml.safe_load(path.read_text())
    differ = {SPELLINGS[int(k[1:])] for k in ours["table"] if ours["table"][k] != older["table"][k]}
    assert {"5e-4", "1e-3", "off", "yes", "0o17"} <= differ
    table = ours["table"]
    assert [table[f"k{SPELLINGS.index(s)}"] for s in ("5e-4", ".5", "1.", "off", "True", "0o17", "~")] == \
        [0.0005, 0.5, 1.0, "off", True, 15, None]
    assert math.isinf(table[f"k{SPELLINGS.index('.inf')}"])


def test_values_dvc_exp_run_set_param_writes_read_back_as_given(tmp_path):
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml

    typed = {"lr": "5e-4", "flag": "off", "answer": "yes", "octal": "0o17", "half": ".5", "one": "1.",
             "on": "True", "betas": "[0.9,1e-3]", "quoted": "'5e-4'", "none": "null", "big": "1e3"}
    path = tmp_path / "params.yaml"
    path.write_text("s:\n" + "".join(f"  {key}: 0\n" for key in typed))
    apply_overrides(path, [f"s.{key}={value}" for key, value in typed.items()])  # what `-S s.lr=5e-4` does
    ours = read_yaml(path)["s"]
    assert ours == load_yaml(path)["s"]
    assert ours == {"lr": 0.0005, "flag": "off", "answer": "yes", "octal": "0o17", "half": 0.5, "one": 1.0,
                    "on": True, "betas": [0.9, 0.001], "quoted": "5e-4", "none": None, "big": 1000.0}


def test_a_learning_rate_in_scientific_notation_is_a_number_for_the_stages_and_the_registry(tmp_path):
    sys.path.insert(0, str(ROOT / "workflow"))
    from registry import param_values

    text = (ROOT / "params.yaml").read_text()
    section = text.index("\ndistill:\n")
    lr = text.index("    lr:", text.index("  generator_optim:", section))
    end = text.index("\n", lr)
    path = tmp_path / "params.yaml"
    path.write_text(text[:lr] + "    lr: 5e-4" + text[end:])
    assert load_params(path).distill.generator_optim.lr == 5e-4
    assert param_values(["distill.generator_optim.lr"], path) == "{distill.generator_optim.lr: 0.0005}"


def test_the_levers_study_reads_params_and_overrides_as_dvc_does():
    sys.path.insert(0, str(ROOT / "bench"))
    from quality_study.digits_levers import load_base

    base = load_base(ROOT / "params.yaml", ["distill.generator_optim.lr=5e-4", "distill.fake_init=random"])
    assert base["distill"]["generator_optim"]["lr"] == 0.0005 and base["distill"]["fake_init"] == "random"
    # YAML 1.2 as DVC reads it (`off` stays a string, not false), then the pipeline's own checks of params.
    with pytest.raises(ConfigError, match="^distill.fake_init: 'off' is not one of random, teacher$"):
        load_base(ROOT / "params.yaml", ["distill.fake_init=off"])
    with pytest.raises(ConfigError, match="^unknown key distil "):
        load_base(ROOT / "params.yaml", ["distil.steps=5"])


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb:\n  c: 2\n  c: 3\n", "f.yaml: duplicate key 'c' on line 4 (already set on line 3)"),
    # A mapping that merges another may override the merged keys, not repeat its own.
    ("base: &b {c: 1}\nuse:\n  <<: *b\n  c: 2\n  c: 3\n", "f.yaml: duplicate key 'c' on line 5 (already set on line 4)"),
    ("a: [1\n", "f.yaml is not valid YAML: line 2, column 1: expected ',' or ']'"),
])
def test_duplicate_keys_and_syntax_errors_name_the_file_and_line(text, message):
    from realuid.yamlfile import YamlFileError

    with pytest.raises(YamlFileError) as err:
        parse_yaml(text, "f.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert parse_yaml("base: &b {c: 1}\nuse:\n  <<: *b\n  c: 2\n", "f.yaml") == {"base": {"c": 1}, "use": {"c": 2}}
