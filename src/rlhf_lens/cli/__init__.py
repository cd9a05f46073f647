"""The `rlhf-lens` command line: one command per stage, plus `run` for all of them.

- `main` (here): the entry point, a user error is one line without a traceback; `common`: the Typer `app`
  the commands register on, and what several commands share (`--reward`, JSON output).
- `options`: a command's options generated from the stage config dataclasses (`takes`, `Options`), so a new
  field of a config is a new option with its docstring as help.
- one module per pipeline stage: `foundation` (fetch, tiny-model), `rewards` (rlhf, reward, serve-reward), `rm` (train-rm),
  `preferences` (pairs),
  `harvest` (divergence, harvest), `sae` (train-sae, mmcs, synthetic, recovery), `interp` (explain,
  utility-score), `diff` (diff), `run` (run, presets, report; `RUN_ONLY`, the settings only a run takes).

A new command goes in its stage's module (a new stage: a new module, imported below) and takes its settings
with `@takes(Options(ItsConfig, into="config"))`. Commands only parse options and compose stage functions;
stages never import this package. Stage modules are imported inside each command so `--help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from ..errors import UserError
from .common import app

__all__ = ["app", "main"]

# Each module registers its commands on `app`; imported in pipeline order, the order `--help` lists them in.
from . import foundation, rewards, preferences, rm, harvest, sae, interp, diff, decompose, run  # noqa: E402, F401, I001


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
