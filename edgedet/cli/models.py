"""``edgedet models list|info|pull``: the model registry."""

from __future__ import annotations

import json

import click

from ..registry import cached_path, get_entry, is_cached, load_registry, pull_model


@click.group("models")
def command() -> None:
    """List, describe and pull the registry's models."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_models(as_json: bool) -> None:
    """Registry models, the default one marked with *."""
    entries, default = load_registry()
    rows = []
    for name, e in entries.items():
        rows.append({
            "name": name, "default": name == default, "form": e.form,
            "input": "x".join(map(str, e.input.get("size", []))), "dtype": e.input.get("dtype", ""),
            "coco_map": e.published.get("coco_map"), "cached": e.form != "tf" and is_cached(e),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'':1} {'name':34} {'form':4} {'input':8} {'dtype':8} {'mAP*':>5}  cached")
    for r in rows:
        mark = "*" if r["default"] else " "
        cmap = "" if r["coco_map"] is None else f"{r['coco_map']:.1f}"
        click.echo(f"{mark} {r['name']:34} {r['form']:4} {r['input']:8} {r['dtype']:8} {cmap:>5}  "
                   f"{'yes' if r['cached'] else 'no'}")
    click.echo("* mAP: published COCO figure (see `edgedet models info NAME` for its source)")


@command.command("info")
@click.argument("name")
def info(name: str) -> None:
    """Everything the registry knows about NAME."""
    e = get_entry(name)
    click.echo(f"{e.name}: {e.description}")
    for key in ("url", "origin", "file", "sha256", "form", "input", "labels", "license"):
        value = getattr(e, key)
        if value:
            click.echo(f"  {key}: {value}")
    if e.published:
        click.echo(f"  published COCO mAP: {e.published.get('coco_map')} ({e.published.get('source')})")
    click.echo(f"  cache: {cached_path(e)} ({'present' if e.form != 'tf' and is_cached(e) else 'not pulled'})")


@command.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="download again even if cached")
def pull(names: tuple[str, ...], force: bool) -> None:
    """Download NAMES into the cache (or copy them from EDGEDET_MODEL_MIRROR), checking sha256."""
    for name in names:
        path = pull_model(name, force=force)
        click.echo(f"{name}: {path}")
