"""Config base for every msc model and job: frozen pydantic v2 models.

Every config is immutable (`frozen=True`) and refuses unknown fields
(`extra="forbid"`), so a typo in a YAML or `config.json` is an error that names the
field instead of a silently ignored setting. Numbers are strict where YAML is loose:
a boolean is never read as a number (`steps: true` is refused, not read as 1), and a
float field refuses NaN and infinity (`lr: .inf`).
"""

from __future__ import annotations

import json
from pathlib import Path
import types
import typing
from typing import Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config could not be built; the message names each offending field."""


def describe_validation_error(err: ValidationError, where: str) -> str:
    """`invalid WHERE: field.path: message (got value)`: one line for one problem, else a
    heading and one indented line per problem."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {loc!r} (not a field of {where})"
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or e["type"] == "value_error" else f" (got {got!r})"
        problems.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    if len(problems) == 1:
        return f"invalid {where}: {problems[0]}"
    return "\n".join([f"invalid {where}:", *(f"  {p}" for p in problems)])


def _takes_numbers_not_bools(annotation: Any) -> bool:
    """Whether a field of this type holds numbers (int, float, int literals) and no booleans."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return all(isinstance(a, int) and not isinstance(a, bool) for a in args)
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return bool(kinds) and all(_takes_numbers_not_bools(a) for a in kinds)
    if typing.get_origin(annotation) is typing.Annotated:
        return _takes_numbers_not_bools(args[0])
    return False


class Config(BaseModel):
    """Base of all msc configs: frozen, strict about unknown fields, JSON round trip."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads True as 1 for an int field; in a YAML job that is a typo, not a count
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field is not None and _takes_numbers_not_bools(field.annotation):
                    raise ValueError(f"{name}: expected a number, got {value!r} (a boolean)")
        return data

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, cls.__name__)) from None

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"invalid {cls.__name__} JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return cls.from_json(path.read_text())

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed (configs are immutable)."""
        return type(self).from_dict({**self.model_dump(), **changes})
