"""Build click options from the config schema (``edgedet.config``), and back to nested overrides."""

from __future__ import annotations

import typing

import click

from ..config import RENAMED, iter_options


def _param_name(path: str) -> str:
    return path.replace(".", "__")


def _click_type(tp, choices):
    if choices:
        return click.Choice([str(c) for c in choices])
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]
    return {int: int, float: float, str: str}.get(base, str)


def config_options(func):
    """Decorator: one click option per config field that declares flags (and hidden ones for the
    old names of renamed options)."""
    for r in RENAMED:
        func = click.option(*r.flags, _param_name(r.old), type=click.Choice(list(r.choices)), default=None,
                            hidden=True)(func)
    for path, f, tp in reversed(list(iter_options())):
        flags = f.metadata.get("flags") or ()
        if not flags:
            continue
        name = _param_name(path)
        choices = f.metadata.get("choices")
        help_text = f"{f.metadata.get('help', '')} [{path}]".strip()  # the YAML key of the flag
        if any("/" in fl for fl in flags):
            decl = list(flags) + [name]
            func = click.option(*decl, default=None, help=help_text)(func)
        else:
            ctype = _click_type(tp, choices)
            func = click.option(*flags, name, type=ctype, default=None, help=help_text,
                                show_default=False)(func)
    return func


def overrides_from_params(params: dict) -> dict:
    """Nested dict of the options given on the command line (None = not given)."""
    out: dict = {}
    for path, f, _tp in iter_options():
        name = _param_name(path)
        if name not in params or params[name] is None:
            continue
        value = params[name]
        choices = f.metadata.get("choices")
        if choices and all(isinstance(c, int) for c in choices):
            value = int(value)
        section, key = path.split(".")
        out.setdefault(section, {})[key] = value
    for r in RENAMED:  # under the old name: the config layer maps it to the new one
        value = params.get(_param_name(r.old))
        if value is not None:
            section, key = r.old.split(".")
            out.setdefault(section, {})[key] = value
    return out
