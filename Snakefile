# Snakemake entry point. All stages come from dvc.yaml (see workflow/registry.py); targets are stage
# names, e.g. `snakemake --cores 2 distill`.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
# The registry reads YAML with the package's strict reader, from this folder's sources (as the stages do).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from registry import final_outputs, load_stages


rule all:
    input:
        final_outputs(load_stages(Path(workflow.basedir) / "dvc.yaml")),
    default_target: True


include: "workflow/rules/stages.smk"
