#!/usr/bin/env bash
# GPU check of RealUID distillation (at most 10 minutes on one H100/H200; synthetic data, no network,
# no dvc): distillation iterations/s of the authors' CIFAR-10 UNet at batch 256 in fp32 and bf16, peak
# memory, one-step vs teacher (NFE 99) sampling images/s, and a check that every loss is finite; then the
# bf16 iteration under each distill.speed option and all together, against the 0.135 s floor (134 TFLOP
# at an H100's dense bf16 peak), and the evaluate stage's metric work at 10k samples.
#
#   bench/gpu_check.sh                   the full check (CUDA when present)
#   bench/gpu_check.sh --tiny            the same code at a CPU size, well under a minute
#   bench/gpu_check.sh --speed none      the precision table and the evaluate timing only
#   bench/gpu_check.sh --json out.json   also write the results as JSON
#   bench/gpu_check.sh --help            every option of bench/gpu_check.py
#   bench/gpu_check.sh --prepare-carry [DIR]
#                                        run where the project's environment is installed, before a run
#                                        on a machine that has PyTorch but not torchcfm or ruamel.yaml
#                                        (DIR: .carry)
#
# Machines with PyTorch but without torchcfm: torchcfm (pure Python) provides the UNet. --prepare-carry
# copies its package folder into .carry/torchcfm, and ruamel.yaml (pure Python, which reads params.yaml)
# into .carry/python/ruamel; bring .carry with the working tree (it must stay ignored by git: add /.carry/
# to .gitignore or .git/info/exclude). POT, which torchcfm's package import needs, is not needed: the
# check then imports torchcfm's models only.
#
# Python: $PYTHON if set, else .venv/bin/python if present, else python3.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi

if [[ "${1:-}" == "--prepare-carry" ]]; then
    carry="${2:-.carry}"
    src="$("$py" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("torchcfm"); print(pathlib.Path(s.origin).parent if s else "")')"
    if [[ -z "$src" ]]; then
        echo "torchcfm is not installed for $py; install the project's requirements first" >&2
        exit 1
    fi
    rm -rf "$carry/torchcfm"
    mkdir -p "$carry"
    cp -R "$src" "$carry/torchcfm"
    find "$carry/torchcfm" -name __pycache__ -type d -prune -exec rm -rf {} +
    echo "copied $src to $carry/torchcfm ($(du -sh "$carry/torchcfm" | cut -f1))"
    yaml_src="$("$py" -c 'import pathlib, ruamel.yaml; print(pathlib.Path(ruamel.yaml.__file__).parent)')"
    rm -rf "$carry/python/ruamel"
    mkdir -p "$carry/python/ruamel"
    cp -R "$yaml_src" "$carry/python/ruamel/yaml"
    find "$carry/python" -name __pycache__ -type d -prune -exec rm -rf {} +
    echo "copied $yaml_src to $carry/python/ruamel/yaml ($(du -sh "$carry/python" | cut -f1))"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && ! git check-ignore -q "$carry/torchcfm"; then
        echo "warning: $carry/ is not ignored by git; add it to .gitignore (or .git/info/exclude)" >&2
    fi
    exit 0
fi

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$py" "$root/bench/gpu_check.py" "$@"
