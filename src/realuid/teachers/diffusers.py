"""Teachers from a local diffusers pipeline folder, as ``DDPMPipeline``/``DDIMPipeline.save_pretrained``
writes it: ``unet/`` (a ``UNet2DModel``: ``config.json`` and its weights) and ``scheduler/``
(``scheduler_config.json``).

Schedulers:

- ``DDPMScheduler``, ``DDIMScheduler``: a VP diffusion over the ``ᾱ`` table that diffusers itself
  builds from the config (any ``beta_schedule`` it knows), read by realuid as
  ``Diffusion(schedule='table')``; ``prediction_type`` ``epsilon`` and ``v_prediction`` become an
  eps-target teacher, ``sample`` an x1 (denoiser) teacher.
- ``FlowMatchEulerDiscreteScheduler``: linear flow matching with ``sigma = 1 - t`` and
  ``timestep = sigma * num_train_timesteps``; ``shift`` only places its inference steps, so it does not
  change the network's field and is not used.

``clip_sample`` and ``thresholding`` clip the scheduler's clean-data estimate while *sampling*; they are
not part of the network's field, so the imported teacher does not apply them (the import says so once).

Only local files are read (``HF_HUB_OFFLINE``, ``local_files_only``); weights come from ``.safetensors``
or, failing that, a ``.bin`` read with ``torch.load(weights_only=True)``: nothing that would run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError
from ..models import DIFFUSERS_UNET

__all__ = ["load_diffusers_teacher"]

DDPM_LIKE = ("DDPMScheduler", "DDIMScheduler")
FLOW_MATCH = "FlowMatchEulerDiscreteScheduler"
# diffusers' prediction_type -> (the adapter's output, the prediction of our diffusion family).
PREDICTIONS = {"epsilon": ("eps", "eps"), "v_prediction": ("v_prediction", "eps"), "sample": ("x0", "x1")}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"{path.parent} has no {path.name}: not a diffusers {what} folder")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def _scheduler(folder: Path):
    """diffusers' own scheduler object built from the folder's config (not a re-derivation of ᾱ)."""
    config = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler")
    name = config.get("_class_name")
    if name not in (*DDPM_LIKE, FLOW_MATCH):
        raise ValueError(f"scheduler {name!r} is not supported; supported: {', '.join((*DDPM_LIKE, FLOW_MATCH))}")
    import diffusers

    cls = getattr(diffusers, name)
    try:
        return cls.from_config(cls.load_config(str(folder / "scheduler"), local_files_only=True))
    except (ValueError, NotImplementedError) as err:  # e.g. a beta_schedule diffusers does not implement
        raise ValueError(f"diffusers cannot build the {name} of {folder}: {err}") from None


def _convention(scheduler) -> tuple[dict, dict]:
    """``(family record, adapter convention)`` of a supported scheduler."""
    config, name = scheduler.config, type(scheduler).__name__
    if name == FLOW_MATCH:
        if config.get("invert_sigmas"):
            raise ValueError("FlowMatchEulerDiscreteScheduler with invert_sigmas is not supported")
        return ({"name": "fm", "options": {}},
                {"output": "velocity", "time": "sigma", "time_scale": float(config["num_train_timesteps"])})
    kind = config.get("prediction_type")
    if kind not in PREDICTIONS:
        raise ValueError(f"prediction_type {kind!r} of the {name} is not supported; supported: {', '.join(PREDICTIONS)}")
    heuristics = [key for key in ("clip_sample", "thresholding") if config.get(key)]
    if heuristics:
        print(f"diffusers import: ignoring {' and '.join(heuristics)} of the {name}: sampling heuristics that "
              "clip the clean-data estimate, not part of the network's field")
    output, prediction = PREDICTIONS[kind]
    table = [float(a) for a in scheduler.alphas_cumprod.double()]
    return ({"name": "diffusion", "options": {"schedule": "table", "prediction": prediction, "alphas_cumprod": table}},
            {"output": output, "time": "discrete", "time_scale": 1.0})


def _weights(unet_dir: Path) -> dict:
    """The UNet's state dict from its safetensors file, or a ``.bin`` read without running code."""
    from ..checkpoints import load_torch_file

    for name in WEIGHT_FILES:
        path = unet_dir / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        state = load_torch_file(path, needed_by="train_teacher.import_checkpoint", expected="diffusers UNet weights file")
        if not isinstance(state, dict):
            raise ValueError(f"{path} is not a state dict")
        return state
    raise ValueError(f"{unet_dir} has no weights file ({' or '.join(WEIGHT_FILES)})")


def _unet_spec(unet_dir: Path, family: dict, convention: dict) -> dict:
    config = _read_json(unet_dir / "config.json", "UNet")
    if config.get("_class_name") != "UNet2DModel":
        raise ValueError(f"{unet_dir} holds a {config.get('_class_name')!r}; only UNet2DModel is supported")
    from diffusers import UNet2DModel

    config = {k: v for k, v in UNet2DModel.load_config(str(unet_dir), local_files_only=True).items()
              if not k.startswith("_")}
    if config.get("class_embed_type") is not None:
        raise ValueError(f"class_embed_type {config['class_embed_type']!r} is not supported (only num_class_embeds)")
    size = config.get("sample_size")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shape = [int(config.get("in_channels", 3)), int(height), int(width)]
    if config.get("out_channels", shape[0]) != shape[0]:
        raise ValueError("the UNet's out_channels differ from its in_channels: it does not predict a field of the data")
    return {"arch": DIFFUSERS_UNET,
            "args": {"shape": shape, "num_classes": int(config.get("num_class_embeds") or 0), "unet": config,
                     "family": family, **convention}}


def _check_fits(spec: dict, unet_state: dict, where: Path) -> None:
    """The weights fit the architecture exactly; otherwise name the first keys that differ."""
    import torch

    from ..models.diffusers_unet import DiffusersUNet2D
    from .statedicts import describe, mismatch

    with torch.device("meta"):  # the parameter layout without allocating weights
        expected = {k: tuple(v.shape) for k, v in DiffusersUNet2D(spec["args"]["unet"]).unet.state_dict().items()}
    problem = mismatch(expected, unet_state)
    if any(problem):
        raise ValueError(f"the weights in {where} do not fit the UNet2DModel of its config.json: {describe(*problem)}")


def load_diffusers_teacher(folder: str | os.PathLike) -> tuple[dict, dict, dict]:
    """``(spec, state_dict, family record)`` of the pipeline in ``folder``.

    ``build_model(spec).load_state_dict(state_dict)`` gives the adapted network ``f(t, x_t, y)`` whose
    output is the native target of the family the record names. A folder it cannot use is one
    :class:`realuid.errors.CheckpointError` (a ValueError) with the reason.
    """
    try:
        return _load(Path(folder))
    except CheckpointError:
        raise
    except ValueError as err:  # every check below names its file; to a stage this is the user's input
        raise CheckpointError(str(err)) from None


def _load(folder: Path) -> tuple[dict, dict, dict]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; a diffusers teacher is a pipeline folder (unet/, scheduler/)")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only: never the network
    family, convention = _convention(_scheduler(folder))
    spec = _unet_spec(folder / "unet", family, convention)
    unet_state = _weights(folder / "unet")
    _check_fits(spec, unet_state, folder / "unet")
    # The adapter holds the UNet as net.unet: the weights are diffusers' own under that prefix.
    return spec, {f"net.unet.{k}": v for k, v in unet_state.items()}, family
