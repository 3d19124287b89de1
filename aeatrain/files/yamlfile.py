"""The one YAML reader of aeatrain (configs, saved configs, a package's ``rdf.yaml``).

:func:`load_yaml` reads YAML 1.2 booleans (``no`` stays the word "no") and refuses, with
one line naming the file (and the line): text over 1 MiB or not UTF-8, a key given twice
in one mapping, and aliases that expand to over 100,000 values (an "alias bomb").
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from aeatrain.errors import UserError


class YamlError(UserError):
    """A YAML file that :func:`load_yaml` refuses; the message names the file."""


# A YAML file may reuse a node by alias; a few hundred bytes of nested aliases then stand
# for billions of values (an "alias bomb"), which validation and error messages expand. No
# config comes near these limits (the paper's is under 2 KiB and 100 values).
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000


class _Yaml12Loader(yaml.SafeLoader):
    """The loader of every YAML file aeatrain reads (:func:`load_yaml`).

    YAML 1.2 booleans: only true/false. PyYAML follows YAML 1.1, where ``no``, ``yes``,
    ``on`` and ``off`` are booleans too, so ``mixed_precision: no`` (or the override
    ``--train.mixed_precision no``) would arrive as False instead of the setting "no".
    A key given twice in one mapping is refused (PyYAML keeps the last one silently), and
    a document whose aliases expand to more than :data:`MAX_YAML_VALUES` values is refused
    before anything is built from it."""

    def construct_document(self, node: yaml.Node) -> Any:
        values = _expanded_values(node, {})
        if values > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to {values:,} values, over the limit of "
                f"{MAX_YAML_VALUES:,}; write the values out", node.start_mark,
            )  # fmt: skip
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` entries may be overridden: that is their purpose
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue  # refused by PyYAML itself below
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping",
                        key_node.start_mark,
                    )  # fmt: skip
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_values(node: yaml.Node, counted: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias written out (shared nodes are
    counted once per use, computed once: linear in the document's size)."""
    if id(node) in counted:
        return counted[id(node)]
    counted[id(node)] = 1  # a recursive alias counts once rather than forever
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_values(item, counted) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(
            _expanded_values(key, counted) + _expanded_values(value, counted)
            for key, value in node.value
        )
    else:
        total = 1
    counted[id(node)] = total
    return total


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(text: str | bytes, source: str | Path) -> Any:
    """Parse YAML text as every aeatrain reader does; UserError naming ``source`` (and the
    line) for text that is not UTF-8, too large, not YAML, or has a key given twice."""
    if len(text) > MAX_YAML_BYTES:
        raise YamlError(
            f"{source}: {len(text):,} bytes, over the {MAX_YAML_BYTES:,} a YAML file read by "
            f"aeatrain may have"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise YamlError(
                f"{source}: not UTF-8 text (byte {err.start} is {text[err.start]:#04x}); "
                f"save it as UTF-8"
            ) from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise YamlError(
            f"{source}:{line} not valid YAML ({getattr(err, 'problem', None) or err})"
        ) from None
