"""The Typer app, its entry point `main` (user errors as one line), and what several commands share."""

from __future__ import annotations

import json
import sys

import typer

from .. import __version__
from ..config import RewardSection
from ..errors import UserError
from .options import Options

app = typer.Typer(
    help="What did RLHF teach this model, and did it learn the reward it was given?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

REWARD = Options(RewardSection, only=("spec",), names={"spec": "--reward"}, required=("spec",))
"""`--reward SPEC` (the reward a command tunes against, compares with or serves): the command's `reward`."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlhf-lens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """rlhf-lens: PPO, layer divergence, sparse autoencoders, MMCS, explanations, utility scores."""


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2, without a traceback.

    An OSError that escapes a command (a full disk, a read-only folder, a missing permission)
    or a file that is not UTF-8 is also one line naming the path (exit 1); other exceptions
    are bugs and keep their traceback.
    """
    try:
        app(args=argv, prog_name="rlhf-lens")
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except OSError as e:
        typer.echo(f"error: {_os_error_line(e)}", err=True)
        sys.exit(1)
    except UnicodeDecodeError as e:
        typer.echo(f"error: a file is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8", err=True)
        sys.exit(1)


def _os_error_line(e: OSError) -> str:
    """`[Errno 28] No space left on device: 'x'` -> `x: no space left on device (ENOSPC)`, on one line."""
    import errno as errno_names

    reason = (e.strerror or str(e) or type(e).__name__).strip().splitlines()[0]
    name = errno_names.errorcode.get(e.errno) if e.errno is not None else None
    reason = f"{reason[:1].lower()}{reason[1:]}" + (f" ({name})" if name else "")
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason
