"""The ``adapter-store`` command line.

Exit codes, for every command: 0 success / valid, 1 a problem was found (one line per
problem on stderr, naming the file and the field), 2 a usage error: an unknown option, or
a path that does not exist or holds no adapter. Errors are one line on stderr; the global
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .cli_hub import pull_command, push_command
from .cli_support import (
    CliGroup,
    CliState,
    cli_state,
    echo_json,
    print_error,
    progress_bar,
    quiet_option,
    version_argument,
)
from .errors import AdapterNotFoundError
from .manifest import manifest_json_schema
from .validation import (
    Problem,
    collect_version_dirs,
    json_schema_available,
    validate_version,
)

DEFAULT_DEMO_STORE = "adapter-store-demo"


@click.group(cls=CliGroup)
@click.version_option(package_name="adapter-store")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Save, share, inspect and validate the trainable part of PyTorch models.

    Exit codes: 0 ok, 1 a problem was found, 2 a usage error.
    """
    ctx.obj = CliState(debug=debug, quiet=quiet)


@main.command()
@click.option(
    "--store",
    "store_path",
    default=DEFAULT_DEMO_STORE,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Local store folder the demo saves into.",
)
@click.option("--steps", default=20, show_default=True, help="Training steps.")
@click.pass_context
def demo(ctx: click.Context, store_path: Path, steps: int) -> None:
    """Train a small LoRA model, save, reload into a fresh model, and check it."""
    from .demo import run_demo  # torch model code only when asked for

    ctx.exit(run_demo(store_path, steps=steps))


@main.command()
def schema() -> None:
    """Print the JSON Schema of manifest.json (as committed in schemas/)."""
    click.echo(json.dumps(manifest_json_schema(), indent=2, sort_keys=True))


# --- validate ------------------------------------------------------------------------


def _version_json(path: Path, manifest: Any, problems: Sequence[Problem]) -> dict[str, Any]:
    return {
        "path": str(path),
        "name": None if manifest is None else manifest.name,
        "version": None if manifest is None else manifest.version,
        "valid": not problems,
        "problems": [problem.as_dict() for problem in problems],
    }


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--schema-only", is_flag=True, help="Check manifests only, not shard files.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@quiet_option
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], schema_only: bool, as_json: bool) -> None:
    """Validate saved adapters without a model.

    PATH is a version directory, a name directory, a whole store, or a file inside a
    version (its manifest.json, a shard or the optimizer file, as pre-commit passes
    them), which stands for the whole version. Checks every manifest against
    the pydantic model and the JSON Schema, and every shard's size, header and checksum.
    """
    try:
        version_dirs = collect_version_dirs(paths)
    except AdapterNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="PATHS") from exc
    if not json_schema_available() and not cli_state().quiet:
        print_error(
            "note: the jsonschema package is not installed; manifests are checked against "
            "the pydantic model only (pip install jsonschema)"
        )
    results = []
    with progress_bar(len(version_dirs), desc="validating", unit="version") as bar:
        for version_dir in version_dirs:
            manifest, problems = validate_version(version_dir, check_shards=not schema_only)
            for problem in problems:
                print_error(str(problem))
            results.append(_version_json(version_dir, manifest, problems))
            bar.update()
    invalid = sum(not result["valid"] for result in results)
    if as_json:
        echo_json(
            {"valid": not invalid, "json_schema": json_schema_available(), "versions": results}
        )
    elif not cli_state().quiet:
        checked = "manifests" if schema_only else "manifests, shards and checksums"
        status = "all valid" if not invalid else f"{invalid} invalid"
        click.echo(f"{len(results)} adapter version(s) checked ({checked}): {status}")
    ctx.exit(1 if invalid else 0)


# --- check ---------------------------------------------------------------------------


@main.command()
@version_argument("path")
@click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="MODULE:FACTORY",
    help="A function (or class) that builds the base model, called with no "
    "arguments; build on the meta device for a structure-only check.",
)
@click.option(
    "--strict/--no-strict",
    default=True,
    show_default=True,
    help="As for load: missing or unexpected keys are problems.",
)
@click.option(
    "--check-base",
    type=click.Choice(["error", "warn", "ignore"]),
    default="error",
    show_default=True,
    help="As for load.",
)
@click.option(
    "--module",
    "modules",
    multiple=True,
    metavar="PATTERN",
    help="Check only these module groups (names or glob patterns; repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@quiet_option
@click.pass_context
def check(
    ctx: click.Context,
    path: Path,
    model_spec: str,
    strict: bool,
    check_base: str,
    modules: tuple[str, ...],
    as_json: bool,
) -> None:
    """Would PATH load into the model MODULE:FACTORY builds? Nothing is loaded.

    Validates the version (as `validate`), then runs the loader's compatibility check:
    keys, shapes and the base-model fingerprint. PATH is a version directory or
    STORE/NAME[/VERSION] (the newest version when VERSION is left out).
    """
    from .factory import ModelFactoryError, build_model
    from .validation import check_fit

    try:
        model = build_model(model_spec)
    except ModelFactoryError as exc:
        raise click.BadParameter(str(exc), param_hint="'--model'") from exc
    try:
        result = check_fit(
            path, model, strict=strict, check_base=check_base, modules=list(modules) or None
        )
    except AdapterNotFoundError as exc:  # a --module pattern that names no module group
        raise click.BadParameter(str(exc), param_hint="'--module'") from exc
    for problem in result.problems:
        print_error(str(problem))
    if result.summary:
        print_error(result.summary)
    for warning in result.warnings:
        print_error(f"warning: {warning}")
    plan = result.plan
    if as_json:
        echo_json(
            {
                "path": str(path),
                "model": model_spec,
                "fits": result.fits,
                "problems": [p.as_dict() for p in result.problems],
                "summary": result.summary,
                "warnings": result.warnings,
                "would_load": None if plan is None else len(plan.steps),
            }
        )
    elif result.fits and plan is not None and not cli_state().quiet:
        click.echo(
            f"{path}: fits {type(model).__name__}: {len(plan.steps)} tensor(s) would load, "
            f"{len(plan.frozen)} frozen; {_base_status(model, check_base, result.warnings)}"
        )
    ctx.exit(0 if result.fits else 1)


def _base_status(model: Any, check_base: str, warnings: Sequence[str]) -> str:
    if check_base == "ignore":
        return "base model not checked"
    if warnings:
        return "base model DIFFERS (--check-base warn)"
    from .safetensors_io import owns_memory

    tensors = list(model.state_dict().values())
    if any(t.device.type == "meta" for t in tensors):
        return "base model structure matches (meta tensors: weights not compared)"
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if any(not owns_memory(t) for t in frozen):  # DTensor-like wrappers, freed storage
        return "base model structure matches (some hold no memory: weights not compared)"
    return "base model matches"


# --- inspect, diff, ls, gc -------------------------------------------------------------


@main.command()
@version_argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
def inspect(path: Path, as_json: bool) -> None:
    """Show an adapter: modules, tensors, dtypes, shapes, sizes, base fingerprint.

    PATH is a version directory or STORE/NAME[/VERSION] (newest when VERSION is left out).
    Reads the manifest only.
    """
    from .inspection import describe_version, render_version
    from .version_files import read_manifest

    view = describe_version(path, read_manifest(path))
    if as_json:
        echo_json(view)
    else:
        click.echo(render_version(view))


@main.command()
@version_argument("before")
@version_argument("after")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when the adapters differ.")
@quiet_option
@click.pass_context
def diff(ctx: click.Context, before: Path, after: Path, as_json: bool, exit_code: bool) -> None:
    """Compare two adapters: modules and tensors added, removed, changed.

    For tensors of the same shape, the largest absolute difference is measured (shards
    are verified first). Each side is a version directory or STORE/NAME[/VERSION].
    """
    from .diffing import diff_versions, render_diff
    from .version_files import read_manifest

    total = len(read_manifest(after).tensors)
    with progress_bar(total, desc="comparing", unit="tensor") as bar:
        result = diff_versions(before, after, on_tensor=lambda _key: bar.update())
    if as_json:
        echo_json(result.as_dict())
    else:
        click.echo(render_diff(result))
    ctx.exit(1 if exit_code and result.differs else 0)


@main.command(name="ls")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
def list_adapters(ctx: click.Context, store: Path, as_json: bool) -> None:
    """List names, versions, steps, sizes and dates in a store (or one name directory)."""
    from .inspection import list_versions, render_rows

    rows = list_versions(store)
    for row in rows:
        if "error" in row:
            print_error(f"error: {row['error']}")
    if as_json:
        echo_json(rows)
    elif rows:
        click.echo(render_rows(rows))
    else:
        print_error(f"{store}: no adapters")
    ctx.exit(1 if any("error" in row for row in rows) else 0)


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--older-than",
    "hours",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Hours after which an unfinished save of another host counts as dead.",
)
def gc(store: Path, hours: float) -> None:
    """Remove what interrupted saves and deletes left behind in a store.

    A temporary directory of this host is removed when its writer process is gone (or,
    should the process id look alive, after a day and --older-than hours), one of another
    host when it is older than --older-than hours; saves in progress are left alone.
    """
    from .store import AdapterStore

    removed = AdapterStore(store).gc(older_than_seconds=hours * 3600)
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} leftover(s) removed" if removed else "nothing to remove")


# Sharing through a Hub repo lives in its own module; huggingface_hub loads when they run.
main.add_command(push_command)
main.add_command(pull_command)


if __name__ == "__main__":
    # `python -m adapter_store.cli` runs exactly what the `adapter-store` script runs, under
    # the same name in usage lines and errors.
    main(prog_name="adapter-store")
