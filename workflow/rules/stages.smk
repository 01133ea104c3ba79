# One rule per dvc.yaml stage, generated in a loop. Each rule binds its command through `params:`
# (late binding: a plain Python variable in `shell:` would be read after the loop ended), writes a log
# per stage, and carries the values of the params keys it declares so that Snakemake reruns it exactly
# when DVC would. Cluster requests (threads, runtime, memory, partition, account, GPUs) come from each
# stage's `meta: slurm:` block in dvc.yaml; a stage whose process count is a param (`meta: nproc:`) asks
# for one GPU per process on one node. GPU stages carry a `gpu` resource (so `--resources gpu=1`
# runs one at a time on a workstation); the Slurm profile sets `gpus=false` because the plugin turns
# that resource into a GPU request, which a cluster without GPUs would leave pending forever.
from pathlib import Path

from registry import gpus_flag, load_stages, param_values, snakemake_resources, stage_processes, stage_threads

STAGES = load_stages(Path(workflow.basedir) / "dvc.yaml")
PARAMS_YAML = Path(workflow.basedir) / "params.yaml"
STAGE_OUTPUTS = {o for s in STAGES for o in s.outs}
GPUS_AVAILABLE = gpus_flag(config.get("gpus", True))


def _snake_output(path):
    # Outputs without a file suffix are folders: Snakemake must be told so.
    return path if Path(path).suffix else directory(path)


for _stage in STAGES:
    _processes = stage_processes(_stage, PARAMS_YAML)

    rule:
        name:
            _stage.name
        input:
            _stage.deps,
        output:
            [_snake_output(o) for o in _stage.outs],
        log:
            f"logs/{_stage.name}.log",
        params:
            cmd=_stage.cmd,
            values=param_values(_stage.params, PARAMS_YAML),
        threads: stage_threads(_stage, _processes)
        resources:
            **snakemake_resources(_stage, gpus_available=GPUS_AVAILABLE, processes=_processes),
        shell:
            "{params.cmd} > {log} 2>&1"
