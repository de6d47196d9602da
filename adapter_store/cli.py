"""The ``adapter-store`` command line.

Exit codes: 0 success / valid, 1 a problem was found (one line per problem on stderr),
2 a usage error (click's convention).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .manifest import manifest_json_schema
from .validation import find_version_dirs, validate_version

DEFAULT_DEMO_STORE = "adapter-store-demo"


@click.group()
@click.version_option(package_name="adapter-store")
def main() -> None:
    """Save, share and reload the trainable part of PyTorch models."""


@main.command()
@click.option("--store", "store_path", default=DEFAULT_DEMO_STORE, show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Local store folder the demo saves into.")
@click.option("--steps", default=20, show_default=True, help="Training steps.")
def demo(store_path: Path, steps: int) -> None:
    """Train a small LoRA model, save, reload into a fresh model, and check it."""
    from .demo import run_demo  # torch model code only when asked for

    sys.exit(run_demo(store_path, steps=steps))


@main.command()
def schema() -> None:
    """Print the JSON Schema of manifest.json."""
    click.echo(json.dumps(manifest_json_schema(), indent=2, sort_keys=True))


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--schema-only", is_flag=True, help="Check manifests only, not shard files.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
def validate(paths: tuple[Path, ...], schema_only: bool, as_json: bool) -> None:
    """Validate adapter versions: PATH is a version directory, a name directory or a store."""
    results = []
    failed = False
    for path in paths:
        versions = find_version_dirs(path)
        if not versions:
            click.echo(f"{path}: no adapter versions found", err=True)
            failed = True
        for version_dir in versions:
            _, problems = validate_version(version_dir, check_shards=not schema_only)
            failed = failed or bool(problems)
            for problem in problems:
                click.echo(str(problem), err=True)
            results.append({"path": str(version_dir), "valid": not problems,
                            "problems": [{"file": p.file, "field": p.field,
                                          "message": p.message} for p in problems]})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    elif not failed:
        click.echo(f"{len(results)} adapter version(s) valid")
    sys.exit(1 if failed else 0)
