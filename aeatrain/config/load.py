"""Reading configs: YAML in, dotted CLI overrides, one-line errors naming the file and key.

- :func:`load_config`: a config file plus ``--section.key value`` overrides, validated into
  a :class:`~aeatrain.config.schema.Config` (what train.py runs);
- :func:`read_saved_config`: a run's saved ``RUN/config.yaml``, as saved (not validated);
- :func:`load_yaml`: the one YAML reader of aeatrain (configs, saved configs, a package's
  ``rdf.yaml``): YAML 1.2 booleans, and refused: a key given twice, an alias bomb, a file
  over 1 MiB or not UTF-8.
"""

from __future__ import annotations

import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aeatrain.config.schema import SECTIONS, Config
from aeatrain.errors import UserError
from aeatrain.models import input_multiple


class ConfigError(UserError):
    """A config file or override that cannot be used; the message names the file and key."""


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``--section.key value`` overrides, validate the result.

    Raises :class:`ConfigError` (one line, naming the file and the key) for a missing or
    unparsable file, an override that is not ``--section.key``, an unknown key or a value
    of the wrong type or range.
    """
    source = str(path) if path is not None else "<no config file>"
    tree = read_yaml_tree(path) if path is not None else {}
    for key, raw in parse_overrides(overrides):
        _set_dotted(tree, key, raw, source)
    return validate_tree(tree, source)


def read_saved_config(path: str | Path) -> dict[str, dict]:
    """A run's ``config.yaml`` as :meth:`Config.to_yaml` saved it: section -> {key: value}.

    The one reader of saved configs (runs, run folders, compare). It is not validated
    against today's :class:`Config`: a run of an older aeatrain may hold keys since renamed
    or removed, and its readers show or compare what ran. ConfigError names the file and
    the section that is not a mapping."""
    tree = read_yaml_tree(path)
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: section {section!r} is a {type(values).__name__}, not a mapping"
            )
    return tree


def read_yaml_tree(path: str | Path) -> dict:
    """The mapping in a YAML config file; ConfigError naming the file if it is not one.

    An empty file is refused: it would silently mean every default, the paper's
    120,000-step setup, which is never what an empty file was meant to say."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        tree = load_yaml(path.read_bytes(), path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    if tree is None:
        raise ConfigError(
            f"{path}: the config file is empty; write at least data.root and train.run_dir "
            f"(an empty file would mean every default: the paper's 120,000-step setup)"
        )
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections {SECTIONS}, got a {type(tree).__name__}"
        )
    return tree


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
        raise ConfigError(
            f"{source}: {len(text):,} bytes, over the {MAX_YAML_BYTES:,} a YAML file read by "
            f"aeatrain may have"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{source}: not UTF-8 text (byte {err.start} is {text[err.start]:#04x}); "
                f"save it as UTF-8"
            ) from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(
            f"{source}:{line} not valid YAML ({getattr(err, 'problem', None) or err})"
        ) from None


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``["--train.steps", "100", "--optim.lr=1e-3"]`` -> ``[("train.steps", "100"), ...]``."""
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(
                f"override {arg!r}: expected --section.key VALUE or "
                f"--section.key=VALUE with section one of {', '.join(SECTIONS)}"
            )
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(args):
                raise ConfigError(f"override {arg}: missing a value")
            key, raw = arg[2:], args[index + 1]
            index += 2
        pairs.append((key, raw))
    return pairs


def _set_dotted(tree: dict, key: str, raw: str, source: str) -> None:
    """Set ``tree[section][field] = value`` with the value parsed as YAML for its field."""
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{source}: override --{key}: expected --section.key")
    section, field = parts
    if section not in tree or tree[section] is None:
        tree[section] = {}
    if not isinstance(tree[section], dict):
        raise ConfigError(
            f"{source}: {section}: expected a mapping, got {type(tree[section]).__name__}"
        )
    tree[section][field] = _parse_value(raw, _field_annotation(section, field))


def _field_annotation(section: str, field: str) -> Any:
    section_field = Config.model_fields.get(section)
    if section_field is None:
        return None
    info = section_field.annotation.model_fields.get(field)
    return None if info is None else info.annotation


def _parse_value(raw: str, annotation: Any) -> Any:
    """YAML scalar/list syntax, except that a string field keeps the text as typed.

    ``--data.root 2024`` must stay the folder "2024", and ``--data.pairs sample_01`` may
    name one pair without list brackets.
    """
    try:
        value = load_yaml(raw, "override")
    except ConfigError:
        value = raw
    if value is None:
        return None
    if _accepts(annotation, str) and not isinstance(value, str):
        return raw
    if _accepts_list_of_str(annotation) and not isinstance(value, list):
        return [raw]
    return value


def _union_args(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _accepts(annotation: Any, kind: type) -> bool:
    return kind in _union_args(annotation)


def _accepts_list_of_str(annotation: Any) -> bool:
    return any(
        typing.get_origin(arg) is list and typing.get_args(arg) == (str,)
        for arg in _union_args(annotation)
    )


# Keys of earlier aeatrain versions whose meaning changed: refused with what to write now.
RENAMED_KEYS = {
    ("logging", "eval_max_tiles"): "renamed logging.eval_max_pairs: validation now scores "
    "whole pairs (3 test tiles each) as aeatrain.evaluate does; give a number of pairs",
}


def validate_tree(tree: dict, source: str) -> Config:
    """Pydantic validation; every error becomes part of ONE line naming its dotted key."""
    for (section, key), message in RENAMED_KEYS.items():
        if isinstance(tree.get(section), dict) and key in tree[section]:
            raise ConfigError(f"{source}: {section}.{key}: {message}")
    try:
        config = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None
    check_crop_multiple(config, source)
    return config


def check_crop_multiple(config: Config, source: str) -> None:
    """``data.crop_size`` against the model's ``input_multiple`` (one source of it: the
    model's spec, ``aeatrain.models.MODELS``); ConfigError naming the key."""
    multiple = input_multiple(config.model.name)
    crop = config.data.crop_size
    if isinstance(crop, int) and crop % multiple:
        raise ConfigError(
            f"{source}: data.crop_size: must be a multiple of {multiple}, the input multiple "
            f"of model {config.model.name!r} (got {crop})"
        )


def format_validation_error(err: ValidationError) -> str:
    """``train.stepz: unknown key; optim.lr: Input should be a valid number (got 'x')``.

    Errors of one key (the branches of a union such as ``int | "full"``) share one entry.
    """
    by_key: dict[str, list[str]] = {}
    for item in err.errors():
        loc = [str(part) for part in item["loc"] if not _is_union_branch(part)]
        key = ".".join(loc) or "<top>"
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            message = f"{message} (got {_short_repr(item.get('input'))})"
        if message not in by_key.setdefault(key, []):
            by_key[key].append(message)
    return "; ".join(f"{key}: {' or '.join(messages)}" for key, messages in by_key.items())


def _short_repr(value: Any) -> str:
    """repr of a value as typed, bounded: a mistaken value may be a whole YAML tree."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 80, 80
    return short.repr(value)


def _is_union_branch(part: Any) -> bool:
    """Pydantic names union branches in error locations (``int``, ``literal['full']``)."""
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool", "list[str]", "constrained-int")
        or part.startswith(("literal[", "function-after["))
    )
