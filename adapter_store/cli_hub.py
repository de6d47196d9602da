"""``adapter-store push`` and ``adapter-store pull``: sharing adapters through a Hub repo.

Plain click commands; ``cli.py`` registers them on the ``main`` group. huggingface_hub is
imported when a command runs, not when the CLI starts. The token comes from huggingface_hub
as usual (``HF_TOKEN``, or ``hf auth login``): there is deliberately no ``--token`` option,
so a token never lands in a shell history or a process list.

Exit codes: 0 done (including "nothing to push"), 1 the push or pull failed (one line on
stderr naming the repo and the file), 2 a usage error (click's convention).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from .errors import AdapterStoreError
from .modelcard import format_bytes
from .store import AdapterStore

_PROGRESS_HELP = "Show progress bars (default: when stderr is a terminal)."


@contextmanager
def _reported_failures() -> Iterator[None]:
    try:
        yield
    except AdapterStoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _split_modules(values: tuple[str, ...]) -> list[str] | None:
    modules = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return modules or None


@click.command("push")
@click.argument(
    "store_path", metavar="STORE", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.argument("name")
@click.argument("repo_id")
@click.option("--version", type=click.IntRange(min=1), help="Version to push (default: newest).")
@click.option("--revision", help="Branch to commit to (created if missing; default: main).")
@click.option("--private", is_flag=True, help="Create the repo private (if it does not exist).")
@click.option("--path-in-repo", help="Folder inside the repo (default: the repo root).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("-m", "--message", "commit_message", help="Commit message.")
@click.option("--progress/--no-progress", default=None, help=_PROGRESS_HELP)
def push_command(
    store_path: Path,
    name: str,
    repo_id: str,
    version: int | None,
    revision: str | None,
    private: bool,
    path_in_repo: str | None,
    create_pr: bool,
    commit_message: str | None,
    progress: bool | None,
) -> None:
    """Push one version of adapter NAME from STORE to the Hub repo REPO_ID, in one commit.

    The newest version unless --version says which. Pushing what the repo already holds
    makes no commit. The token is huggingface_hub's (HF_TOKEN or `hf auth login`).
    """
    from .hub import push  # huggingface_hub only when the command runs

    with _reported_failures():
        result = push(
            AdapterStore(store_path),
            repo_id,
            name,
            version,
            path_in_repo=path_in_repo,
            revision=revision,
            private=private or None,
            commit_message=commit_message,
            create_pr=create_pr,
            progress=_progress(progress),
        )
    if not result.changed:
        click.echo(
            f"{result.repo_id} already holds this version; nothing pushed. commit {result.commit}"
        )
        return
    click.echo(f"pushed {name!r} to {result.repo_id}: commit {result.commit}")
    if result.pr_url:
        click.echo(f"pull request: {result.pr_url}")


@click.command("pull")
@click.argument("repo_id")
@click.argument("store_path", metavar="STORE", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Local adapter name (default: the repo's, or path's, last part).")
@click.option("--revision", help="Branch, tag, refs/pr/N or commit id (default: main).")
@click.option("--path-in-repo", help="Folder inside the repo (default: the repo root).")
@click.option(
    "--modules",
    multiple=True,
    metavar="GROUPS",
    help="Download only these module groups (names or glob patterns; repeat the "
    "option or separate with commas).",
)
@click.option("--progress/--no-progress", default=None, help=_PROGRESS_HELP)
def pull_command(
    repo_id: str,
    store_path: Path,
    name: str | None,
    revision: str | None,
    path_in_repo: str | None,
    modules: tuple[str, ...],
    progress: bool | None,
) -> None:
    """Pull an adapter from the Hub repo REPO_ID into STORE, verified, as a new version."""
    from .hub import pull  # huggingface_hub only when the command runs

    with _reported_failures():
        saved = pull(
            AdapterStore(store_path),
            repo_id,
            name=name,
            revision=revision,
            path_in_repo=path_in_repo,
            modules=_split_modules(modules),
            progress=_progress(progress),
        )
    origin = saved.manifest.origin
    commit = origin.commit if origin is not None else "?"
    click.echo(
        f"pulled {repo_id} at {commit} into {saved.path} ({saved.name!r} "
        f"v{saved.version}: {len(saved.manifest.shards)} shards, "
        f"{format_bytes(saved.nbytes)}, checksums verified)"
    )


__all__ = ["pull_command", "push_command"]
