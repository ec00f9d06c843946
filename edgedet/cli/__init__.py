"""The ``edgedet`` command: thin click commands; each lives in its own module beside this one.

Errors a user can cause (``EdgedetError``) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import signal
import sys

import click

from .. import __version__
from ..errors import EdgedetError

#: commands for which SIGTERM is the normal way to stop (exit 0, like their own graceful stop)
STOPPED_BY_SIGTERM = {"run"}


class Terminated(BaseException):
    """SIGTERM where no graceful stop is installed yet (start-up): unwinds, closing what is open."""


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signal.Signals(signum).name)


# command name -> module in this package that defines a click command called ``command``
COMMANDS = {
    "run": "run",
    "bench": "bench",
    "eval": "evaluate",
    "convert": "convert",
    "prune": "prune",
    "models": "models",
    "calibration": "calibration",
}


class LazyGroup(click.Group):
    """Import a command's module only when it is used (keeps start-up fast on a Pi)."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None:
            return None
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                return None
            raise
        return mod.command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option of any command: one line, like every user error
            name = exc.ctx.command_path if exc.ctx is not None else "edgedet"
            click.echo(f"edgedet: error: {exc.format_message()} (see: {name} --help)", err=True)
            ctx.exit(2)
        except EdgedetError as exc:
            click.echo(f"edgedet: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgedet: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgedet")
def main() -> None:
    """Real-time object detection on small ARM computers."""


def run_main() -> None:  # console-script entry point
    # until a command installs its own stop (the run loop does), SIGTERM unwinds like an exception
    # so that files are closed, instead of killing the process where it stands
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(standalone_mode=True)
    except BrokenPipeError:  # e.g. `edgedet models list | head`
        sys.exit(0)
    except Terminated as exc:
        click.echo(f"edgedet: {exc}: stopped", err=True)
        name = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        sys.exit(0 if name in STOPPED_BY_SIGTERM else 128 + signal.SIGTERM)
