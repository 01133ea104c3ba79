"""Strict reading of a YAML file as DVC reads it: duplicate keys, bad encoding and syntax errors are
errors naming the file.

DVC parses params.yaml and dvc.yaml with ruamel.yaml in its safe YAML 1.2 mode, and ``dvc exp run -S``
writes values back in that dialect. A YAML 1.1 reader (PyYAML) disagrees on values people type:
``5e-4`` is a string there and ``off``/``yes`` are booleans, so a stage would refuse a learning rate
DVC accepts, or read ``yes`` as another value than DVC records. Everything that reads params.yaml or
dvc.yaml goes through :func:`read_yaml` (or :func:`parse_yaml`), so every engine reads exactly the
same values from exactly the same files. A key written twice in one mapping is an error naming both
lines (DVC's parser refuses the file too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["YamlFileError", "read_yaml", "parse_yaml"]

MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ConfigError):
    """A YAML file that cannot be used: not UTF-8, not valid YAML, or a mapping with a repeated key."""


def _reader(name: str):
    """DVC's reader (``YAML(typ="safe")``, YAML 1.2) whose mappings refuse a repeated key by line."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import SafeConstructor
    from ruamel.yaml.nodes import MappingNode

    class UniqueKeyConstructor(SafeConstructor):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, MappingNode):
                first_line: dict[Any, int] = {}
                # Only the mapping's own keys: keys brought in by a `<<:` merge may be overridden, as YAML
                # says (ruamel itself skips the check for a mapping that merges; this one does not).
                for key_node, _ in node.value:
                    if key_node.tag == MERGE_TAG:
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        seen = key in first_line
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    line = key_node.start_mark.line + 1
                    if seen:
                        raise YamlFileError(f"{name}: duplicate key {key!r} on line {line} "
                                            f"(already set on line {first_line[key]})")
                    first_line[key] = line
            return super().construct_mapping(node, deep=deep)

    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = UniqueKeyConstructor
    return yaml


def parse_yaml(text: str, name: str) -> Any:
    """The document in ``text``; errors name ``name`` (the file it came from) and the line."""
    from ruamel.yaml import YAMLError

    try:
        return _reader(name).load(text)
    except YAMLError as err:
        raise YamlFileError(f"{name} is not valid YAML: {_one_line(err)}") from None


def _one_line(err) -> str:
    """ruamel.yaml's error as one line: where, what went wrong, and in which construct."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    context = getattr(err, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def read_yaml(path: str | Path) -> Any:
    """The document in the UTF-8 YAML file ``path``.

    Raises :class:`YamlFileError` for text that is not UTF-8, invalid YAML or a duplicate key (each
    naming the file and the line); a file that cannot be read raises the ``OSError`` of ``open``.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise YamlFileError(f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line} "
                            "cannot be decoded; save the file as UTF-8") from None
    return parse_yaml(text, str(path))
