"""Checkpoint files: one schema for teachers, generators and resumable training state.

A checkpoint is a safetensors file: the tensors, plus a JSON header whose ``realuid`` entry is the
record below. Nothing in it is pickled, so reading one can never run code, and the tensors are
memory-mapped rather than unpickled.

Record (``kind`` teacher | generator)::

    format   "realuid-checkpoint/2"
    kind     what the file is; every reader names the kind it needs and refuses the others
    spec     the model's constructor spec (:func:`realuid.models.build_model` rebuilds it)
    family   {"name", "options"} of the matching family the network was trained for
    copies   names of the named weight copies besides the raw weights ("ema_0.999", "best", ...)
    meta     a small JSON dict: step, alpha/beta, where an import came from, which copy is best, ...
    config   the effective training config of the run
    code     {"version", "commit", "dirty"} of the code that wrote it (commit None outside git)

Tensors are named ``weights/<parameter>`` and ``copies/<copy>/<parameter>``. Teachers and generators
use the same layout: a trained teacher has one copy (its EMA, e.g. ``ema_0.999``), a generator one per
EMA decay and whatever else its training adds. The resumable state of a state folder (``kind: state``)
is any nested structure of tensors, dicts, lists, tuples and scalars: its tensors are stored flat under
their path and the structure as JSON (``tree``), so optimizer states round-trip exactly.

``sha256`` in the header is a hash of the record and of every tensor's name, dtype, shape and bytes,
checked on every read: a flipped byte is an error, never silently different weights. Writes are
atomic and deterministic: identical content gives identical bytes.

Files of the previous format (``torch.save`` dicts, ``realuid-checkpoint/1``) still load, read with
``weights_only=True``; the RealUID authors' ``.pt`` files are torch files too (:func:`load_torch_file`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import subprocess
import warnings
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .errors import CheckpointError

FORMAT = "realuid-checkpoint/2"
LEGACY_FORMAT = "realuid-checkpoint/1"
MODEL_KINDS = ("teacher", "generator")
_RECORD = "realuid"
_HASH = "sha256"
_WEIGHTS, _COPIES = "weights", "copies"
# What a reader calls each kind in its messages.
_KIND_NAMES = {"teacher": "teacher checkpoint", "generator": "generator checkpoint",
               "state": "training-state checkpoint"}


@dataclasses.dataclass
class Checkpoint:
    """A teacher or generator in memory: what :func:`save_checkpoint` writes and :func:`read_checkpoint` returns.

    ``weights`` and every entry of ``copies`` are state dicts of the network ``spec`` describes. ``code``
    is filled in when the file is written. ``source`` names the file it was read from (for messages).
    """

    kind: str
    spec: dict
    family: dict
    weights: dict
    copies: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)
    config: dict = dataclasses.field(default_factory=dict)
    code: dict | None = None
    source: str = dataclasses.field(default="", compare=False)

    def copy_name(self, choice: str | float | None) -> str | None:
        """The copy ``choice`` names: None for the raw weights (``None``, ``"none"``), ``ema_<decay>`` for a
        decay (``0.999`` or ``"0.999"``), else the name itself (``"best"``, ``"ema_0.999"``)."""
        if choice is None or choice == "none":
            return None
        if isinstance(choice, (int, float)) and not isinstance(choice, bool):
            return ema_copy_name(choice)
        try:
            return ema_copy_name(float(choice))
        except ValueError:
            return str(choice)

    def state_dict(self, choice: str | float | None) -> dict:
        """The weights of copy ``choice`` (see :meth:`copy_name`); a copy it lacks is a clear error."""
        name = self.copy_name(choice)
        if name is None:
            return self.weights
        if name not in self.copies:
            where = self.source or f"the {self.kind}"
            raise CheckpointError(f"{where} has no copy {choice!r}; it has the raw weights ('none')"
                                  f"{' and ' + ', '.join(sorted(self.copies)) if self.copies else ' only'}")
        return self.copies[name]


def ema_copy_name(decay: float | str) -> str:
    """How the EMA copy at ``decay`` is named in a checkpoint: ``0.999`` -> ``"ema_0.999"``."""
    return f"ema_{float(decay)!r}"


def family_record(family) -> dict:
    """How a checkpoint names its family, ``{"name", "options"}``; ``make_family(name, **options)`` rebuilds it."""
    return {"name": family.name, "options": family.options()}


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> None:
    """Write a teacher or generator checkpoint atomically (safetensors, no pickle)."""
    if checkpoint.kind not in MODEL_KINDS:
        raise ValueError(f"checkpoint kind must be one of {MODEL_KINDS}, got {checkpoint.kind!r}")
    tensors = {f"{_WEIGHTS}/{k}": v for k, v in checkpoint.weights.items()}
    for name, state in checkpoint.copies.items():
        if not name or "/" in name or name == "none":
            raise ValueError(f"copy names must be non-empty, without '/', and not 'none'; got {name!r}")
        tensors.update({f"{_COPIES}/{name}/{k}": v for k, v in state.items()})
    record = {"format": FORMAT, "kind": checkpoint.kind, "spec": checkpoint.spec, "family": checkpoint.family,
              "copies": sorted(checkpoint.copies), "meta": checkpoint.meta, "config": checkpoint.config,
              "code": checkpoint.code if checkpoint.code is not None else code_provenance()}
    _write(record, tensors, path)


def save_state(state: dict, path: str | os.PathLike) -> None:
    """Write the resumable training state (``kind: state``): any nesting of dicts, lists, tuples,
    scalars and tensors, e.g. optimizer state dicts, restored exactly by :func:`read_state`."""
    tensors: dict = {}
    tree = _encode(state, (), tensors)
    _write({"format": FORMAT, "kind": "state", "tree": tree}, tensors, path)


def _write(record: dict, tensors: dict, path: str | os.PathLike) -> None:
    from safetensors.torch import save

    path = Path(path)
    tensors = _plain_tensors(tensors)
    header = json.dumps(record)
    # One metadata entry: safetensors keeps metadata in a hash map whose order varies from run to run,
    # and identical content must give identical bytes. The hash covers the record's exact text.
    sealed = json.dumps({_HASH: _content_hash(header, tensors), "record": header})
    blob = save(tensors, metadata={_RECORD: sealed})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Durable: a run resumes from the state file after a crash of the machine, not only of the process.
    atomic_write(path, blob, durable=True)


def _plain_tensors(tensors: dict) -> dict:
    """Contiguous CPU tensors that share no memory (safetensors stores each tensor once, by itself)."""
    seen, out = set(), {}
    for name, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        ptr = value.untyped_storage().data_ptr()
        if value.numel() and ptr in seen:
            value = value.clone()  # e.g. an imported teacher whose raw weights are also a copy
        seen.add(ptr)
        out[name] = value
    return out


def _content_hash(header: str, tensors: dict) -> str:
    """sha256 of the record and of each tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        if t.numel():
            # Raw bytes whatever the dtype (bfloat16 has no numpy twin): view as bytes, no copy.
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def code_provenance(*folders: str | Path) -> dict:
    """The project version and, when the package sits in a git work tree, its commit and whether the
    tracked files under ``folders`` (default: the package's own) differ from it. Without git (or outside a
    repository) the commit is None."""
    from . import __version__

    package = Path(__file__).resolve().parent
    folders = folders or (package,)
    commit = dirty = None
    try:
        head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0:
            commit = head.stdout.strip()
            status = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no", "--",
                                     *map(str, folders)], capture_output=True, text=True, timeout=10)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass  # git absent or hanging: the version alone is recorded
    return {"version": __version__, "commit": commit, "dirty": dirty}


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike, kind: str, *, needed_by: str) -> Checkpoint:
    """Read a ``kind`` (teacher | generator) checkpoint for ``needed_by`` (a stage, a function).

    Any other file is one clear :class:`CheckpointError`: ``<path> is a <what it is>; <needed_by> needs a
    <kind> checkpoint`` (another kind, a bare tensor, a plain state dict, an empty file, ...), a damaged
    file names the failed content hash, a pickle holding code is refused without running it.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    path = Path(path)
    container = _container(path, kind, needed_by)
    if container == "torch":
        return _from_legacy(path, load_torch_file(path, needed_by=needed_by, expected=_KIND_NAMES[kind]), kind,
                            needed_by)
    record, tensors = _read_safetensors(path, kind, needed_by)
    weights = {k[len(_WEIGHTS) + 1:]: v for k, v in tensors.items() if k.startswith(_WEIGHTS + "/")}
    copies: dict = {name: {} for name in record["copies"]}
    for key, value in tensors.items():
        if key.startswith(_COPIES + "/"):
            name, param = key[len(_COPIES) + 1:].split("/", 1)
            copies[name][param] = value
    return Checkpoint(kind=kind, spec=record["spec"], family=record["family"], weights=weights, copies=copies,
                      meta=record["meta"], config=record["config"], code=record["code"], source=str(path))


def read_state(path: str | os.PathLike, *, needed_by: str = "resuming") -> dict:
    """The resumable training state written by :func:`save_state` (or a format-1 ``torch.save`` state)."""
    path = Path(path)
    if _container(path, "state", needed_by) == "torch":
        state = load_torch_file(path, needed_by=needed_by, expected=_KIND_NAMES["state"])
        what = _describe_torch(state)
        if what != "a training-state checkpoint (realuid format 1)":
            raise CheckpointError(f"{path} is {what}; {needed_by} needs a {_KIND_NAMES['state']}")
        return state
    record, tensors = _read_safetensors(path, "state", needed_by)
    return _decode(record["tree"], tensors)


def _container(path: Path, kind: str, needed_by: str) -> str:
    """``"safetensors"`` or ``"torch"`` (a zip or pickle written by ``torch.save``), from the first bytes."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; {needed_by} needs a {_KIND_NAMES[kind]} file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if size == 0:
        raise CheckpointError(f"{path} is an empty file (0 bytes); {needed_by} needs a {_KIND_NAMES[kind]}")
    # safetensors first: its 8-byte header length may well start with 0x80, a pickle's first byte.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or its older pickle format
        return "torch"
    raise CheckpointError(f"{path} is neither a safetensors nor a torch file; {needed_by} needs a {_KIND_NAMES[kind]}")


def _read_safetensors(path: Path, kind: str, needed_by: str) -> tuple[dict, dict]:
    """(record, tensors) of a realuid safetensors file of ``kind``; the kind is checked before the
    tensors are read, the content hash after."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header, record, expected_hash = _unseal((fh.metadata() or {}).get(_RECORD))
            if record is None:
                raise CheckpointError(f"{path} is a safetensors file without a realuid record (plain weights, no "
                                      f"model spec); {needed_by} needs a {_KIND_NAMES[kind]}")
            if record.get("kind") != kind:
                what = _KIND_NAMES.get(record.get("kind"), f"{record.get('kind')!r} checkpoint")
                raise CheckpointError(f"{path} is a {what}; {needed_by} needs a {_KIND_NAMES[kind]}")
            if record.get("format") != FORMAT:
                raise CheckpointError(f"{path} is in checkpoint format {record.get('format')!r}; this version of "
                                      f"realuid reads {FORMAT!r} (and {LEGACY_FORMAT!r})")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {_one_line(err)}") from None
    if _content_hash(header, tensors) != expected_hash:
        raise CheckpointError(f"{path} is damaged: its content does not match the sha256 written with it; "
                              "rerun the stage that wrote it")
    return record, tensors


def _unseal(sealed: str | None) -> tuple[str | None, dict | None, str | None]:
    """(record text, record, content hash) of the ``realuid`` metadata entry; Nones where there is none."""
    try:
        outer = json.loads(sealed) if sealed is not None else None
        header = outer["record"]
        record = json.loads(header)
        if isinstance(record, dict):
            return header, record, outer.get(_HASH)
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    return None, None, None


def load_torch_file(path: str | os.PathLike, map_location="cpu", *, needed_by: str = "realuid",
                    expected: str = "torch checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of a torch file (the authors' checkpoints, format-1 files,
    feature caches); a missing, empty, unreadable or code-carrying file is one clear error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is an empty file (0 bytes); {needed_by} needs a {expected}")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        try:
            record = _read_header(path)
            what = _KIND_NAMES.get(record.get("kind"), "safetensors file") if record else "safetensors file"
        except (OSError, ValueError):
            what = "safetensors file"
        raise CheckpointError(f"{path} is a {what}; {needed_by} needs a {expected}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. about pickle protocols: the outcome is all that matters
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message runs to paragraphs and ends by suggesting weights_only=False: the one
        # thing a user must not do with a file that carries code.
        raise CheckpointError(f"{path} contains objects other than tensors (pickled Python objects that "
                              "would run code when loaded); realuid does not run them") from None
    except Exception as err:  # a truncated zip, a foreign format: torch says why in its first line
        raise CheckpointError(f"{path} is not a readable checkpoint: {_one_line(err)}") from None


def _read_header(path: Path) -> dict | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return _unseal((fh.metadata() or {}).get(_RECORD))[1]


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _describe_torch(obj) -> str:
    """What a ``torch.load``-ed object is, in the words of the error messages."""
    import torch

    if isinstance(obj, torch.Tensor):
        return "a bare tensor"
    if not isinstance(obj, dict):
        return f"a torch file holding a {type(obj).__name__}"
    if obj.get("format") == LEGACY_FORMAT and obj.get("kind") in MODEL_KINDS:
        return f"a {_KIND_NAMES[obj['kind']]} (realuid format 1)"
    if obj.get("format") == "realuid-feature-net":
        return "a feature-extractor checkpoint"
    if "net_model" in obj or "ema_models" in obj:
        return "a RealUID authors' checkpoint"
    if "step" in obj and ("model" in obj or "generator" in obj):
        return "a training-state checkpoint (realuid format 1)"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "a plain state dict (weights without a model spec)"
    return "a torch file that is not a realuid checkpoint"


def _from_legacy(path: Path, obj, kind: str, needed_by: str) -> Checkpoint:
    """A format-1 teacher or generator dict (``torch.save``) as a :class:`Checkpoint`."""
    what = _describe_torch(obj)
    if what != f"a {_KIND_NAMES[kind]} (realuid format 1)":
        hint = (" (import it with train_teacher.import_checkpoint)"
                if kind == "teacher" and what == "a RealUID authors' checkpoint" else "")
        raise CheckpointError(f"{path} is {what}; {needed_by} needs a {_KIND_NAMES[kind]}{hint}")
    try:
        if kind == "teacher":
            copies = {"ema": obj["ema_state_dict"]}
            meta = {k: obj[k] for k in ("step", "imported_from") if k in obj}
        else:
            copies = {ema_copy_name(decay): state for decay, state in obj["ema"].items()}
            meta = {k: obj[k] for k in ("step", "alpha", "beta") if k in obj}
        return Checkpoint(kind=kind, spec=obj["spec"], family=obj["family"], weights=obj["state_dict"],
                          copies=copies, meta=meta, source=str(path))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is an incomplete format-1 {_KIND_NAMES[kind]} (missing {err}); "
                              f"rerun the stage that wrote it") from None


# --------------------------------------------------------------------------------------------------
# Nested state <-> tensors + JSON
# --------------------------------------------------------------------------------------------------
# JSON has no tuples, no non-string keys and no tensors; these markers (single-key objects whose key
# starts with "$") stand for them. Dicts are kept in insertion order: optimizer state lists its
# parameter groups in order.


def _encode(obj, path: tuple, tensors: dict):
    import torch

    if isinstance(obj, torch.Tensor):
        name = "/".join(path) or "."
        if name in tensors:
            raise ValueError(f"two entries of the state map to the tensor name {name!r}")
        tensors[name] = obj
        return {"$tensor": name}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"$tuple": items}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, (*path, k), tensors) for k, v in obj.items()}
        if not all(k is None or isinstance(k, (bool, int, float, str)) for k in obj):
            raise TypeError(f"state keys must be scalars, got {sorted(map(repr, obj))} at {'/'.join(path)}")
        return {"$items": [[k, _encode(v, (*path, str(k)), tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {'/'.join(path) or 'the top'})")


def _decode(node, tensors: dict):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, value), = node.items()
        if key == "$tensor":
            return tensors[value]
        if key == "$float":
            return float(value)
        if key == "$tuple":
            return tuple(_decode(v, tensors) for v in value)
        if key == "$items":
            return {k: _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in node.items()}


# --------------------------------------------------------------------------------------------------
# torch files other than checkpoints (feature caches), and digests
# --------------------------------------------------------------------------------------------------


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file.

    For the plain-tensor torch files that are not checkpoints (feature nets, feature caches).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialise in memory first: torch.save names the archive after the file it writes to, and a
    # random temporary name would make identical files differ byte for byte.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def tensors_digest(tensors: dict) -> str:
    """sha256 of named tensors (each one's name, dtype, shape and bytes), wherever they live."""
    return _content_hash("", _plain_tensors(tensors))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
