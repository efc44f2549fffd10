"""The click group ``supervisor``: global options, the one error handler, and every command.

The only place the commands of :mod:`.instances` and :mod:`.remote` are put together.
"""

from __future__ import annotations

import logging
import typing as t
from pathlib import Path

import click

from supervisor import __version__
from supervisor.cli import instances, remote
from supervisor.cli.context import is_debug
from supervisor.errors import InstallError, SupervisorError, os_error_hint

logger = logging.getLogger(__name__)


class SupervisorGroup(click.Group):
    """Turn our errors into one ``Error: …`` line and the documented exit code."""

    def invoke(self, ctx: click.Context) -> t.Any:
        """Run the command and render our errors."""
        try:
            return super().invoke(ctx)
        except SupervisorError as e:
            if is_debug(ctx):
                logger.exception("failed")
            click.echo(f"Error: {e}", err=True)
            if isinstance(e, InstallError) and e.log_tail:
                click.echo("--- last lines of the install log ---", err=True)
                click.echo(e.log_tail.rstrip(), err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except OSError as e:
            # Disk full, permissions, read-only file systems: name the file and what to do, no traceback.
            if is_debug(ctx):
                logger.exception("failed")
            where = f"'{e.filename}'" + (f" -> '{e.filename2}'" if e.filename2 else "") + ": " if e.filename else ""
            click.echo(f"Error: {where}{e.strerror or e}. {os_error_hint(e)}", err=True)
            ctx.exit(1)


@click.group(
    cls=SupervisorGroup, context_settings={"auto_envvar_prefix": "SUPERVISOR", "help_option_names": ["-h", "--help"]}
)
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    help="State folder (registry, checkouts, logs). Default: ~/.local/share/bot-supervisor.",
)
@click.option("--tmux-socket", help="Name of our tmux server's socket (tmux -L). Default: bot-supervisor.")
@click.option("--debug", is_flag=True, help="Log debug output and show tracebacks.")
@click.version_option(__version__, prog_name="supervisor")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, tmux_socket: str | None, debug: bool) -> None:
    """Install, run and supervise many source-installed bots in tmux or screen sessions.

    \b
    Quick tour:
      supervisor recipes                     # what can be installed
      supervisor new mm-1 -r example-bot     # clone + install one instance
      supervisor start mm-1                  # run it in its own session
      supervisor ls                          # state, pid, CPU, memory, uptime
      supervisor attach mm-1                 # the bot's real console
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj.update(home=home, tmux_socket=tmux_socket, debug=debug)


for _command in (*instances.COMMANDS, *remote.COMMANDS):
    cli.add_command(_command)
