# One rule per dvc.yaml stage, generated in a loop. Each rule binds its command through `params:`
# (late binding: a plain Python variable in `shell:` would be read after the loop ended), writes a log
# per stage, and carries the values of the params keys it declares so that Snakemake reruns it exactly
# when DVC would.
from pathlib import Path

from registry import load_stages, param_values

STAGES = load_stages(Path(workflow.basedir) / "dvc.yaml")
STAGE_OUTPUTS = {o for s in STAGES for o in s.outs}


def _snake_output(path):
    # Outputs without a file suffix are folders: Snakemake must be told so.
    return path if Path(path).suffix else directory(path)


for _stage in STAGES:

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
            values=param_values(_stage.params, Path(workflow.basedir) / "params.yaml"),
        resources:
            gpu=1 if _stage.uses_gpu else 0,
        shell:
            "{params.cmd} > {log} 2>&1"
