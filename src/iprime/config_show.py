"""``iprime config show``: every key of a PRIME config, its value and its documentation.

``iprime config show --config configs/eurus2_7b_prime.yaml rollout.n=8`` loads the file and the
dotted overrides exactly as ``iprime train`` does (same :func:`~iprime.config.load_config`, same
errors), then prints one entry per key::

    rollout.n = 8    (default: 4)
        K, responses per prompt (the paper uses 4).

For a CUDA run (``model.device=cuda``) it ends with the memory estimate per GPU as ``#`` lines
(:func:`iprime.preflight.estimate_block`; the model's size from its ``config.json``, the Hugging
Face cache or :data:`iprime.preflight.KNOWN_MODELS`, never the network).

The documentation is each field's attribute docstring in ``iprime/config.py``, read from the
dataclass source with :mod:`ast`; a field without one shows its type instead. The output is plain
text wrapped at ``--width`` (nothing is cut off), so it reads the same on a terminal, in a pipe
and in a file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import typer
import yaml

SHOW_EXAMPLES = """Examples:
iprime config show                                              (every key and its default)
iprime config show --config configs/eurus2_7b_prime.yaml --changed
iprime config show --config run.yaml rollout.n=8 train.steps=200 --no-docs"""

config_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Inspect PRIME run configs.", epilog=SHOW_EXAMPLES
)


@config_app.callback()
def _config_root() -> None:
    """Inspect PRIME run configs: every key, its value and its documentation."""


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One leaf of the config tree."""

    key: str
    """Dotted key, e.g. ``rollout.n``."""
    value: Any
    default: Any
    annotation: Any
    doc: str | None
    """The field's attribute docstring, whitespace collapsed; ``None`` if it has none."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: attribute docstring}`` of a dataclass, read from its source with ``ast``.

    An attribute docstring is a string literal statement directly after the annotated assignment
    (PEP 257); whitespace (the source's line breaks and indentation) is collapsed to single spaces.
    Fields inherited from a base class are looked up in that class's source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (frozen app, REPL class): types only
            continue
        tree = ast.parse(source)
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if node is None:
            continue
        body = node.body
        for stmt, after in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def type_name(annotation: Any) -> str:
    """A readable name of a field's type as it is written in YAML or an override: ``int``,
    ``float or null``, ``one of: hf, vllm``, ``true or false``."""
    if annotation is bool:
        return "true or false"
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in get_args(annotation) if a is not type(None)]
        nullable = type(None) in get_args(annotation)
        return " or ".join(names + (["null"] if nullable else []))
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return f"list of {type_name(item)}"
    return getattr(annotation, "__name__", str(annotation))


def format_value(value: Any) -> str:
    """The value as it would be written in YAML or an override: strings bare when that reads back
    as the same string, else quoted; everything else as JSON (``null``, ``true``, ``5e-07``)."""
    if isinstance(value, str):
        plain = bool(value) and value == value.strip() and "\n" not in value and "#" not in value
        if plain:
            try:
                plain = yaml.safe_load(value) == value
            except yaml.YAMLError:
                plain = False
        return value if plain else json.dumps(value)
    return json.dumps(value)


def iter_keys(cfg: Any, default: Any | None = None, prefix: str = "") -> Iterator[KeyInfo]:
    """Every leaf of a config dataclass tree, depth first in declaration order."""
    cls = type(cfg)
    default = default if default is not None else cls()
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, base, f"{prefix}{f.name}.")
        else:
            yield KeyInfo(f"{prefix}{f.name}", value, base, hints[f.name], docs.get(f.name))


def section_docs(cfg: Any) -> dict[str, str]:
    """``{section name: class docstring}`` for the top-level sections (``model``, ``rollout``, ...)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = " ".join(inspect.cleandoc(type(value).__doc__ or "").split())
    return out


def _wrap(text: str, width: int, indent: str) -> list[str]:
    if width <= 0:
        return [indent + text]
    return textwrap.wrap(
        text,
        width=max(width, len(indent) + 20),
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def render(cfg: Any, *, width: int = 100, changed_only: bool = False, docs: bool = True) -> str:
    """The text ``iprime config show`` prints for ``cfg`` (a :class:`~iprime.config.PrimeConfig`)."""
    lines: list[str] = []
    sections = section_docs(cfg)
    current = None
    for info in iter_keys(cfg):
        if changed_only and info.value == info.default:
            continue
        section = info.key.split(".", 1)[0]
        if section != current:
            current = section
            if lines:
                lines.append("")
            lines.extend(_wrap(f"[{section}] {sections.get(section, '')}".rstrip(), width, ""))
        line = f"{info.key} = {format_value(info.value)}"
        if info.value != info.default:
            line += f"    (default: {format_value(info.default)})"
        lines.append(line)
        if docs:
            text = info.doc if info.doc else f"type: {type_name(info.annotation)}"
            lines.extend(_wrap(text, width, "    "))
    return "\n".join(lines) + "\n"


@config_app.command(
    "show",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[OPTIONS] [KEY=VALUE]...",
    epilog=SHOW_EXAMPLES,
)
def show(
    ctx: typer.Context,
    config: str = typer.Option(None, "--config", help="YAML config file (as for iprime train)"),
    changed: bool = typer.Option(False, "--changed", help="only the keys whose value differs from the default"),
    no_docs: bool = typer.Option(False, "--no-docs", help="values only, one line per key"),
    width: int = typer.Option(100, "--width", help="wrap documentation at this many columns; 0: no wrapping"),
) -> None:
    """Every config key with its value and documentation: iprime config show [--config FILE] [KEY=VALUE ...]"""
    from iprime.config import ConfigError, load_config

    try:
        cfg = load_config(config, list(ctx.args))
    except ConfigError as err:
        typer.echo(f"config error: {err}", err=True)
        raise typer.Exit(2) from None
    from iprime.preflight import estimate_block, model_size

    header = f"# {config or 'defaults'}" + (f" + {' '.join(ctx.args)}" if ctx.args else "")
    typer.echo(header + "\n" + render(cfg, width=width, changed_only=changed, docs=not no_docs), nl=False)
    block = estimate_block(cfg, model_size(cfg.model.policy)) if cfg.model.device.startswith("cuda") else []
    if block:
        typer.echo("\n" + "\n".join(block))
