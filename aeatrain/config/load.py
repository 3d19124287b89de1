"""Reading configs: YAML in, dotted CLI overrides, one-line errors naming the file and key.

- :func:`load_config`: a config file plus ``--section.key value`` overrides, validated into
  a :class:`~aeatrain.config.schema.Config` (what train.py runs);
- :func:`read_saved_config`: a run's saved ``RUN/config.yaml``, as saved (not validated).

Both read YAML through :func:`aeatrain.files.yamlfile.load_yaml`, the one YAML reader.
"""

from __future__ import annotations

import reprlib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aeatrain.config.schema import SECTIONS, Config
from aeatrain.errors import UserError
from aeatrain.files.yamlfile import YamlError, load_yaml
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
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    try:
        tree = load_yaml(text, path)
    except YamlError as err:
        raise ConfigError(str(err)) from None
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
    except YamlError:
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
