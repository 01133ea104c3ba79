"""Strict reading of a YAML file: duplicate keys, bad encoding and syntax errors are errors naming the file.

PyYAML keeps the last of two equal keys in a mapping without a word, while DVC's parser refuses the
file; a stage (and the Snakemake registry) that took ``alpha: 0.5`` appended below ``alpha: 0.94``
would run a different experiment than ``dvc repro``. Everything that reads params.yaml or dvc.yaml
goes through :func:`read_yaml`, so every engine accepts exactly the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["YamlFileError", "read_yaml", "parse_yaml"]

MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ConfigError):
    """A YAML file that cannot be used: not UTF-8, not valid YAML, or a mapping with a repeated key."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            # Only the mapping's own keys: keys brought in by a `<<:` merge may be overridden, as YAML says.
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
                    raise YamlFileError(f"{self.name}: duplicate key {key!r} on line {line} "
                                        f"(already set on line {first_line[key]})")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, name: str) -> Any:
    """The document in ``text``; errors name ``name`` (the file it came from) and the line."""
    loader = _UniqueKeyLoader(text)
    loader.name = name  # marks in error messages say this instead of "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise YamlFileError(f"{name} is not valid YAML: {_one_line(err)}") from None
    finally:
        loader.dispose()


def _one_line(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line: where, what went wrong, and in which construct."""
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
