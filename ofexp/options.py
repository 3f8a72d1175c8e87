"""Options as dataclass fields: each defined once, with its default, help, choices and form.

A config's option is a field made with `option()`: `DataConfig` (ofexp.data),
`RecipeOptions` and `SpeedOptions` (ofexp.training), `TrainConfig`, `FusionOptions` and
`EvaluateOptions` (ofexp.pipeline). From these definitions, and nothing else,
- the CLI builds its click options and reads them back (`ofexp.cli.options.typed_options`),
- the cluster engines render each step's command (`command_params`),
- the run params are written (`option_params`), and
- tests hold the MLproject files to them (tests/test_packaging.py).
This module imports nothing of ofexp's, so that every layer's configs can use it.
See docs/design.md, "One owner per name".
"""
from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any, Callable, Sequence

# The `kind`s an option may name where its default does not say how the command line reads it.
SEED = "seed"  # an integer torch takes as a seed (the CLI checks it where it enters)


def option(default: Any, help: str | Callable[[], str], *, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
           name: str | None = None, parse: Callable[[str], Any] | None = None,
           show: Callable[[Any], str] | None = None, type: type | None = None, kind: str | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field that is a command-line option.

    `name` is the option's name when it is not the field's (`--method` for `methods`);
    `parse` turns the command-line text into the value and `show` turns the value back
    into that text, for options whose value is not a plain int, float, str or bool.
    `type` is the value's type when the default (None: "not given") does not say it.
    `metavar` is how the help writes the value, where the type's name would mislead.
    `help` and `choices` may be functions, called when the CLI is built, for options
    whose text comes from a registry (the data sets).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "name": name, "parse": parse,
                                            "show": show, "type": type, "kind": kind,
                                            "metavar": metavar})


def option_fields(cls: type) -> list[Field]:
    """The fields of `cls` that are options, in definition order."""
    return [f for f in fields(cls) if "help" in f.metadata]


def option_name(f: Field) -> str:
    """The option's name with '_' (the MLproject parameter's and the run param's; '--' and '-' make the CLI's)."""
    return f.metadata["name"] or f.name


def option_help(f: Field) -> str:
    text = f.metadata["help"]
    return text() if callable(text) else text


def option_choices(f: Field) -> tuple[str, ...] | None:
    choices = f.metadata["choices"]
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def option_values(obj: object) -> dict[str, Any]:
    """{field name: value} of the options of `obj` (a config with option fields)."""
    return {f.name: getattr(obj, f.name) for f in option_fields(type(obj))}


def param_str(value: object) -> str:
    """How ofexp writes a value as an MLflow param or tag: on/off as true/false (the form MLproject
    parameters take), a list comma-joined, anything else as str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(param_str(v) for v in value)
    return str(value)


def show_value(f: Field, value: Any) -> str | None:
    """The command-line text of an option's value; None for an unset optional value."""
    if f.metadata["show"] is not None:
        return f.metadata["show"](value)
    return None if value is None else param_str(value)


def option_params(obj: object) -> dict[str, str]:
    """The options of `obj` as run params: {option name: text}, 'none' for an unset one."""
    return {option_name(f): text if (text := show_value(f, getattr(obj, f.name))) is not None else "none"
            for f in option_fields(type(obj))}


def command_params(obj: object, cls: type | None = None, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Every set option of `obj` as {MLproject parameter: text}: on/off options as `<name>_value`
    (true/false), which the CLI reads as `--<name>-value`. The cluster engines pass these."""
    params = {}
    for f in option_fields(cls or type(obj)):
        text = show_value(f, getattr(obj, f.name))
        if text is not None and f.name not in exclude:
            params[option_name(f) + ("_value" if isinstance(f.default, bool) else "")] = text
    return params
