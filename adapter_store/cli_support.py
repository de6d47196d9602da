"""Plumbing shared by the ``adapter-store`` commands: global options, one-line errors,
progress bars, and the PATH argument that names one version directory."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from tqdm import tqdm

from .errors import AdapterNotFoundError, AdapterStoreError
from .validation import resolve_version_dir

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class CliState:
    """Global options, shared with every command through the click context."""

    debug: bool = False
    quiet: bool = False

    @property
    def progress(self) -> bool:
        return not self.quiet and is_terminal(sys.stderr)


def is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, AdapterStoreError):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


class CliGroup(click.Group):
    """Turns any error into one line on stderr and exit 1, unless ``--debug``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            state = ctx.find_object(CliState)
            if state is None or state.debug:
                raise
            print_error(f"error: {one_line(exc)}")
            ctx.exit(1)


def print_error(line: str) -> None:
    # tqdm.write keeps a progress bar, if one is drawn, below the printed line.
    tqdm.write(line, file=sys.stderr)


def cli_state() -> CliState:
    return click.get_current_context().ensure_object(CliState)


def progress_bar(total: int, *, desc: str, unit: str) -> tqdm[Any]:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        disable=not cli_state().progress,
    )


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(CliState).quiet = True


def quiet_option(command: _F) -> _F:
    """``-q/--quiet`` on a command as well as on the group: no progress bar, no summary."""
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_set_quiet,
        help="No progress bar and no summary line; problems are still printed.",
    )(command)


def _version_dir(_ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """Click callback: PATH as a version directory (see ``resolve_version_dir``)."""
    try:
        return resolve_version_dir(value)
    except AdapterNotFoundError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


def version_argument(name: str) -> Callable[[_F], _F]:
    """A PATH argument resolved to one version directory (exit 2 when it is none)."""
    return click.argument(name, type=click.Path(path_type=Path), callback=_version_dir)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float as the string "NaN", "Infinity" or
    "-Infinity": command output is read by strict JSON parsers (jq, JavaScript), which
    refuse the bare tokens a manifest may hold (see docs/format.md)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as indented, strict JSON (``strict_json``)."""
    click.echo(json.dumps(strict_json(value), indent=2, allow_nan=False))
