"""Code deps in dvc.yaml cannot drift: each stage lists exactly the source files its command runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
from code_deps import closure, code_deps, compact, expand, rewrite_deps  # noqa: E402
from registry import load_stages  # noqa: E402

STAGES = load_stages(ROOT / "dvc.yaml")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(src: Path, files: set[Path]) -> set[str]:
    return {p.relative_to(src).as_posix() for p in files}


def test_closure_follows_lazy_and_relative_imports_and_runs_package_inits(tmp_path):
    src = write(tmp_path, {
        "pkg/__init__.py": "def __getattr__(name):\n    from .heavy import thing\n    return thing\n",
        "pkg/heavy.py": "",
        "pkg/leaf.py": "import torch\n",
        "pkg/lazy.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/cli.py": "from .. import leaf\nfrom ..other import name\n\ndef main():\n    from pkg import lazy\n",
        "pkg/other.py": "name = 1\n",
        "pkg/unused.py": "",
    })
    got = names(src, closure(src, "pkg.sub.cli"))
    assert got == {"pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/cli.py", "pkg/leaf.py", "pkg/other.py",
                   "pkg/lazy.py"}


def test_expand_reads_a_folder_as_its_python_files(tmp_path):
    write(tmp_path, {"src/pkg/a.py": "", "src/pkg/m/b.py": "", "src/pkg/m/data.txt": ""})
    assert expand(tmp_path, ["src/pkg/m", "src/pkg/a.py", "data/prepare"]) == {"src/pkg/m/b.py", "src/pkg/a.py"}


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_each_stage_declares_exactly_the_source_files_it_runs(stage):
    runs = set(code_deps(ROOT, stage.cmd))
    declared = expand(ROOT, stage.deps)
    assert not runs - declared, f"{stage.name} runs {sorted(runs - declared)} but dvc.yaml does not list them"
    assert not declared - runs, f"{stage.name} lists {sorted(declared - runs)} in dvc.yaml but never runs them"


def test_imports_point_one_way():
    src = ROOT / "src"
    models = names(src, closure(src, "realuid.models"))
    # Beside models/ only leaves: the user errors (errors.py imports nothing: any module may raise them) and the
    # family maths (an imported network answers in its family's target, so its builder makes the family;
    # realuid.matching is a leaf itself but for realuid.tensors and the errors).
    allowed = {"realuid/__init__.py", "realuid/errors.py", "realuid/matching.py", "realuid/tensors.py"}
    assert all(n.startswith("realuid/models/") or n in allowed for n in models), sorted(models)
    library = [p for p in (src / "realuid").rglob("*.py") if "stages" not in p.parts]
    for path in library:
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        reached = names(src, closure(src, module))
        assert not any(n.startswith("realuid/stages/") for n in reached), f"{module} imports the stages"


# What the distillation alone runs: editing it must not retrain the teacher (a day at paper scale) or
# resample it. losses.py stays: the teacher's matching loss lives beside the RealUID losses.
DISTILLATION_ONLY = {"realuid/training/distillation.py", "realuid/distillation_losses.py", "realuid/gan.py",
                     "realuid/in_training_eval.py"}


@pytest.mark.parametrize("stage", ["train_teacher", "sample", "evaluate"])
def test_the_teacher_and_sampling_stages_run_nothing_of_the_distillation(stage):
    src = ROOT / "src"
    reached = names(src, closure(src, f"realuid.stages.{stage}"))
    assert not reached & DISTILLATION_ONLY, sorted(reached & DISTILLATION_ONLY)
    if stage != "train_teacher":  # sampling and scoring need the device, not the training loops
        assert not any(n.startswith("realuid/training/") for n in reached), sorted(reached)


def test_the_writer_leaves_a_correct_registry_as_it_is():
    # `python workflow/code_deps.py --write` is how the deps are kept right: on the committed dvc.yaml
    # (which the test above checks) it must change nothing, comments and layout included.
    text = (ROOT / "dvc.yaml").read_text()
    wanted = {s.name: compact(ROOT, code_deps(ROOT, s.cmd)) for s in STAGES}
    assert rewrite_deps(text, wanted) == text
    stale = text.replace("      - src/realuid/stages/report.py\n", "")
    assert stale != text and rewrite_deps(stale, wanted) == text
