"""The commands that speak MQTT or serve the network: agent, service, fleet, dashboard and events.

The broker options (``--broker``, ``--ca``, ``--cert``, ``--key``, ``--config``) are declared once,
by :func:`broker_options`, and ``agent.toml`` is resolved in one place, :meth:`BrokerOptions.load`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import typing as t
from pathlib import Path

import click

from supervisor.cli import render
from supervisor.cli.context import get_manager, get_paths, log_info_to_console, stop_on_signals
from supervisor.errors import SupervisorError
from supervisor.files import atomic_write

if t.TYPE_CHECKING:
    from supervisor.fleet.view import Snapshot
    from supervisor.mqtt.config import AgentConfig
    from supervisor.paths import Paths

logger = logging.getLogger(__name__)

EXIT_INCOMPLETE = 4
"""``fleet ls``: some hosts' records did not all arrive in time (stderr names them)."""


def _agent_option(*names: str, **kwargs: t.Any) -> t.Callable[[t.Callable[..., t.Any]], t.Callable[..., t.Any]]:
    """Return an option that skips SUPERVISOR_AGENT_* (the agent config reads SUPERVISOR_* itself)."""
    return click.option(*names, allow_from_autoenv=False, **kwargs)


@dataclasses.dataclass(frozen=True)
class BrokerOptions:
    """The broker options one command was given (``None``: not given)."""

    url: str | None
    ca: Path | None
    cert: Path | None
    key: Path | None
    config_file: Path | None

    def load(self, paths: Paths, **overrides: t.Any) -> AgentConfig:
        """Return the settings: these options and ``overrides`` > ``SUPERVISOR_*`` > the TOML file > defaults.

        The TOML file is ``--config``, else ``$SUPERVISOR_HOME/agent.toml`` if it exists.
        """
        from supervisor.mqtt.config import find_agent_config, load_agent_config

        given = {"url": self.url, "ca": self.ca, "cert": self.cert, "key": self.key}
        toml = find_agent_config(self.config_file, paths.agent_config)
        return load_agent_config(toml, os.environ, {**given, **overrides})


_FILE = click.Path(path_type=Path, dir_okay=False)
_BROKER_OPTIONS = (
    _agent_option(
        "--broker",
        help="Broker URL, mqtt://[user@]host[:port] or mqtts://… "
        "(env SUPERVISOR_BROKER; default: agent.toml's, else mqtt://localhost:1883).",
    ),
    _agent_option("--ca", type=_FILE, help="CA file that signs the broker's certificate (mqtts://)."),
    _agent_option("--cert", type=_FILE, help="Client certificate (mutual TLS)."),
    _agent_option("--key", type=_FILE, help="Client certificate's private key."),
    _agent_option(
        "--config",
        "config_file",
        type=_FILE,
        help="Agent TOML file. Default: $SUPERVISOR_HOME/agent.toml if it exists.",
    ),
)


def broker_options(command: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """Add the broker options to ``command``, which receives them as one ``broker: BrokerOptions``."""

    @functools.wraps(command)
    def wrapper(
        *args: t.Any,
        broker: str | None,
        ca: Path | None,
        cert: Path | None,
        key: Path | None,
        config_file: Path | None,
        **kwargs: t.Any,
    ) -> t.Any:
        return command(*args, broker=BrokerOptions(broker, ca, cert, key, config_file), **kwargs)

    decorated: t.Callable[..., t.Any] = wrapper
    for option in reversed(_BROKER_OPTIONS):
        decorated = option(decorated)
    return decorated


@click.command("agent")
@broker_options
@_agent_option("--namespace", help="Hummingbot topic namespace. Default: hbot.")
@_agent_option("--host-id", help="This host's id in topics. Default: the short host name.")
@_agent_option("--mqtt5", is_flag=True, default=None, help="Speak MQTT 5 instead of 3.1.1.")
@_agent_option("--heartbeat-interval", type=click.FloatRange(min=0.05), help="Seconds between heartbeats. Default: 10.")
@_agent_option(
    "--state-interval", type=click.FloatRange(min=0.05), help="Seconds between state refreshes. Default: 30."
)
@_agent_option(
    "--check-interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between full looks at every bot (kills, starts, stops are seen at once). Default: state interval.",
)
@_agent_option(
    "--fatal-after",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Restarts after fast failures before the instance is marked 'fatal' (the next fast failure ends it).",
)
@_agent_option(
    "--backoff", type=click.FloatRange(min=0), default=1.0, show_default=True, help="First restart delay (doubles)."
)
@_agent_option(
    "--no-hbot-relay", is_flag=True, help="Do not answer Hummingbot's topics (they cannot be signed); heartbeats go on."
)
@_agent_option(
    "--embedded-broker",
    is_flag=True,
    help="Run an MQTT broker (amqtt) inside the agent, on --broker's address (default 127.0.0.1:1883).",
)
@click.pass_context
def agent_cmd(
    ctx: click.Context,
    broker: BrokerOptions,
    namespace: str | None,
    host_id: str | None,
    mqtt5: bool | None,
    heartbeat_interval: float | None,
    state_interval: float | None,
    check_interval: float | None,
    fatal_after: int,
    backoff: float,
    no_hbot_relay: bool,
    embedded_broker: bool,
) -> None:
    """Run the MQTT agent in the foreground.

    It relays Hummingbot-style commands into the sessions, publishes heartbeats
    and state, and restarts crashed bots. Bots keep running when it stops.
    Keep the broker password out of the command line: use SUPERVISOR_BROKER_PASSWORD
    or password_file in the config file.
    """
    from supervisor.agent.host import Agent
    from supervisor.mqtt.guard import configure_agent_logging

    manager = get_manager(ctx)
    paths = get_paths(ctx)
    config = broker.load(
        paths,
        namespace=namespace,
        host_id=host_id,
        protocol="5" if mqtt5 else None,
        heartbeat_interval=heartbeat_interval,
        state_interval=state_interval,
    )
    log_info_to_console(ctx)
    configure_agent_logging(
        paths.agent_log,
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
    )
    embedded = None
    if embedded_broker or config.embedded_broker:
        from supervisor.mqtt.embedded import EmbeddedBroker

        if broker.url is None and "SUPERVISOR_BROKER" not in os.environ and broker.config_file is None:
            config.broker.host = "127.0.0.1"  # the default broker URL says localhost; bind loopback only
        embedded = EmbeddedBroker(config.broker.host, config.broker.port)
        embedded.start()
    agent = Agent(
        manager,
        config,
        fatal_after=fatal_after,
        backoff_base=backoff,
        check_interval=check_interval,
        hbot_relay=not no_hbot_relay,
    )
    stop_on_signals(agent.stop)
    try:
        agent.run()
    finally:
        if embedded is not None:
            embedded.stop()


@click.group("service")
def service_grp() -> None:
    """Run the agent as a systemd user service."""


@service_grp.command("install")
@click.option("--broker", help="Broker URL written into the unit (no password: use agent.toml's password_file).")
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
@click.pass_context
def service_install_cmd(ctx: click.Context, broker: str | None, print_only: bool) -> None:
    """Write a systemd user unit that starts the agent at boot and restarts it if it dies."""
    import shlex

    paths = get_paths(ctx)
    argv = [sys.executable, "-m", "supervisor", "agent"] + (["--broker", broker] if broker else [])
    unit = "\n".join(
        [
            "[Unit]",
            "Description=bot-supervisor agent (MQTT relay, heartbeats, crash recovery)",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            f"Environment=SUPERVISOR_HOME={paths.home}",
            f"Environment=SUPERVISOR_TMUX_SOCKET={paths.tmux_socket}",
            f"ExecStart={shlex.join(argv)}",
            "Restart=on-failure",
            "RestartSec=5",
            "# A tmux server first started by the agent lives in this unit's cgroup: stopping the",
            "# agent must never take the bots down with it.",
            "KillMode=process",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )
    if print_only:
        click.echo(unit, nl=False)
        return
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    target = config_home / "systemd" / "user" / "bot-supervisor-agent.service"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, unit, mode=0o644)
    user = os.environ.get("USER", "$USER")
    click.echo(f"wrote {target}")
    click.echo("enable it with:")
    click.echo("  systemctl --user daemon-reload && systemctl --user enable --now bot-supervisor-agent")
    click.echo("and let it run without a login session (survives logout and reboot):")
    click.echo(f"  sudo loginctl enable-linger {user}")


@click.group("fleet")
@broker_options
@click.pass_context
def fleet_grp(ctx: click.Context, broker: BrokerOptions) -> None:
    """See and drive the instances of every host through the shared broker.

    \b
    Targets are HOST/INSTANCE; '*' selects many:
      supervisor fleet ls
      supervisor fleet restart host-1/mm-1
      supervisor fleet stop 'host-2/*'
      supervisor fleet status '*/mm-1'
    With SUPERVISOR_SECRET set (the same on agents), requests are signed.
    """
    ctx.obj["fleet"] = broker


def _fleet(ctx: click.Context) -> t.Any:
    from supervisor.fleet.client import FleetClient

    broker: BrokerOptions = ctx.find_root().obj["fleet"]
    return FleetClient(broker.load(get_paths(ctx)))


@fleet_grp.command("ls")
@click.option(
    "--wait",
    type=click.FloatRange(min=0.1, max=600),
    default=5.0,
    show_default=True,
    help=(
        "Seconds to wait at most for hosts whose records are not all in, or out of date and not yet "
        "beaten (it ends as soon as they are)."
    ),
)
@click.option(
    "--beats",
    is_flag=True,
    help="Also wait (within --wait) for every host's own beat: one that sends none in time is shown unresponsive.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def fleet_ls_cmd(ctx: click.Context, wait: float, beats: bool, as_json: bool) -> None:
    """List every host and instance the broker knows (offline hosts and stale records are marked).

    Each agent says how many instances it has: when some did not all arrive within --wait,
    the listing is printed, stderr names the hosts and what is missing, and the exit code is 4.
    """
    with _fleet(ctx) as client:
        snap = client.snapshot(wait, beats=beats)
    if as_json:
        _print_listing_json(snap.to_dict())
    else:
        _print_fleet(snap)
    if _warn_incomplete(snap, wait):
        ctx.exit(EXIT_INCOMPLETE)


def _print_listing_json(data: dict[str, t.Any]) -> None:
    """Print ``data`` as JSON with one list item a line (each by json's C encoder).

    At 20,000 instances the indented encoder, which is pure Python, takes seconds by itself.
    """
    import json

    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            items = ",\n".join("    " + json.dumps(item, default=str) for item in value)
            parts.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value, default=str)}")
    click.echo("{\n" + ",\n".join(parts) + "\n}")


def _warn_incomplete(snap: Snapshot, wait: float) -> bool:
    """Name on stderr the hosts whose records did not all arrive; return whether there are any."""
    incomplete = snap.incomplete
    if not incomplete:
        return False
    missing = sum(h.missing for h in incomplete)
    click.echo(
        f"warning: incomplete view: {missing} instance record(s) of {len(incomplete)} host(s) did not arrive "
        f"within {wait:g}s. The broker may drop what it sends one client beyond its limits (mosquitto: "
        "max_inflight_messages, max_queued_messages; see the README's fleet section), or a set is changing; "
        "run again with a larger --wait.",
        err=True,
    )
    for host in incomplete[:50]:
        click.echo(f"  {host.host}: {host.received} of {host.expected} instance records", err=True)
    if len(incomplete) > 50:
        click.echo(f"  ... and {len(incomplete) - 50} more host(s) (--json lists them all)", err=True)
    return True


def _print_fleet(snap: Snapshot) -> None:
    if not snap.hosts and not snap.instances:
        click.echo("No agents seen on this broker. Start one with: supervisor agent --broker URL")
        return
    rows = []
    for view in snap.instances:
        rec = view.record
        alive = view.state in render.ALIVE_STATES
        rows.append(
            [
                view.host,
                view.name,
                view.state,
                str(rec.get("pid") or "-") if alive else "-",
                f"{rec['cpu_percent']:.1f}" if alive and rec.get("cpu_percent") is not None else "-",
                render.human_bytes(rec.get("rss")) if alive else "-",
                render.human_duration(rec.get("uptime")) if alive else "-",
                str(rec.get("restarts", "-")),
                str(rec.get("commit") or "-")[:8],
                render.human_duration(view.heartbeat_age),
                render.human_duration(view.age),
            ]
        )
    headers = ["HOST", "INSTANCE", "STATE", "PID", "CPU%", "RSS", "UPTIME", "RESTARTS", "COMMIT", "HB AGE", "REC AGE"]
    render.table(headers, rows, colour_col=2)
    offline = sorted(h.host for h in snap.hosts.values() if h.state not in ("online", "unresponsive") and h.trusted)
    if offline:
        click.echo(f"\noffline hosts (agent's last will): {', '.join(offline)}")
    hung = sorted(h.host for h in snap.hosts.values() if h.state == "unresponsive")
    if hung:
        click.echo(
            f"\nunresponsive hosts (agent connected but not beating: hung, stopped or starved; "
            f"its bots' records are not vouched for): {', '.join(hung)}"
        )
    untrusted = sorted(h.host for h in snap.hosts.values() if not h.trusted)
    if untrusted:
        click.echo(
            f"\nuntrusted hosts (record not signed with the shared secret; never acted on): {', '.join(untrusted)}"
        )


def _fleet_command(
    ctx: click.Context, verb: str, targets: tuple[str, ...], data: dict[str, t.Any], timeout: float, as_json: bool
) -> None:
    from supervisor.fleet.client import DEFAULT_WAIT, Snapshot, expand

    with _fleet(ctx) as client:
        # Only wildcards need the fleet's view; explicit targets are sent as given.
        needs_view = any("*" in target for target in targets)
        snap = client.snapshot(DEFAULT_WAIT) if needs_view else Snapshot(hosts={}, instances=[])
        if needs_view:
            _warn_incomplete(snap, DEFAULT_WAIT)  # a wildcard may then miss instances of those hosts
        chosen = expand(targets, snap)
        replies = client.run(chosen, verb, data, timeout)
    if as_json:
        render.print_json([r.to_dict() for r in replies])
    else:
        for reply in replies:
            mark = (
                "ok"
                if reply.ok
                else "TIMEOUT"
                if reply.timed_out
                else "FAILED" + (f" ({reply.status})" if reply.status else "")
            )
            click.echo(f"{reply.target}: {mark}: {reply.msg}")
            if verb == "tail" and reply.ok and isinstance(reply.result, dict):
                click.echo(reply.result.get("screen", ""))
    if not all(r.ok for r in replies):
        ctx.exit(1)


def _make_fleet_verb(verb: str, summary: str) -> None:
    @fleet_grp.command(verb, help=summary)
    @click.argument("targets", nargs=-1, required=True)
    @click.option(
        "--timeout", type=click.FloatRange(min=0.1), default=45.0, show_default=True, help="Seconds to wait per target."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print replies as JSON.")
    @click.pass_context
    def command(ctx: click.Context, targets: tuple[str, ...], timeout: float, as_json: bool) -> None:
        _fleet_command(ctx, verb, targets, {}, timeout, as_json)


for _verb, _summary in (
    ("start", "Start instances on their hosts (HOST/INSTANCE...)."),
    ("stop", "Stop instances gracefully on their hosts (HOST/INSTANCE...)."),
    ("restart", "Restart instances on their hosts (HOST/INSTANCE...)."),
    ("status", "Ask hosts for the live status of instances (HOST/INSTANCE...)."),
):
    _make_fleet_verb(_verb, _summary)


@fleet_grp.command("tail")
@click.argument("targets", nargs=-1, required=True)
@click.option("-n", "--lines", type=click.IntRange(1, 1000), default=30, show_default=True, help="Lines of screen.")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True, help="Seconds to wait per target."
)
@click.option("--json", "as_json", is_flag=True, help="Print replies as JSON.")
@click.pass_context
def fleet_tail_cmd(ctx: click.Context, targets: tuple[str, ...], lines: int, timeout: float, as_json: bool) -> None:
    """Print the current screen of instances on their hosts."""
    _fleet_command(ctx, "tail", targets, {"lines": lines}, timeout, as_json)


@fleet_grp.command("send")
@click.argument("target")
@click.argument("text")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def fleet_send_cmd(ctx: click.Context, target: str, text: str, timeout: float, as_json: bool) -> None:
    """Type one line into an instance's console on its host, literally (control characters are refused)."""
    from supervisor.consoletext import check_console_text

    check_console_text(text, what=f"target '{target}': the text to send")
    _fleet_command(ctx, "send", (target,), {"text": text}, timeout, as_json)


@click.group("dashboard", invoke_without_command=True)
@broker_options
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT to serve on (env SUPERVISOR_DASHBOARD_LISTEN); anything but loopback needs a password.",
)
@_agent_option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="SQLite history file. Default: $SUPERVISOR_HOME/dashboard.sqlite.",
)
@click.option(
    "--insecure-no-login",
    is_flag=True,
    help="Serve loopback without a password: EVERY local user and process can then stop and start your bots.",
)
@click.pass_context
def dashboard_grp(
    ctx: click.Context,
    broker: BrokerOptions,
    listen: str,
    db_path: Path | None,
    insecure_no_login: bool,
) -> None:
    """Serve one live web page for the whole fleet (state, heartbeats, controls, consoles, PnL).

    \b
    Examples:
      supervisor dashboard --broker mqtt://broker.lan     # http://127.0.0.1:8080/
      supervisor dashboard passwd --write                 # set the login password
      supervisor dashboard --listen 0.0.0.0:8080          # needs the password
    The password hash lives in $SUPERVISOR_HOME/dashboard.toml or SUPERVISOR_DASHBOARD_PASSWORD_HASH.
    On loopback without one, the first start makes a password, stores its hash and prints it once.
    """
    if ctx.invoked_subcommand is not None:
        return
    from supervisor._http import parse_listen
    from supervisor.fleet.dashboard import DashboardError
    from supervisor.fleet.dashboard.auth import hash_password, load_settings, new_password, write_password_hash
    from supervisor.fleet.dashboard.server import Dashboard, is_loopback
    from supervisor.fleet.dashboard.store import Store

    paths = get_paths(ctx)
    config = broker.load(paths)
    settings = load_settings(paths.dashboard_config, os.environ)
    log_info_to_console(ctx)
    made = None
    if not settings.login_required and not insecure_no_login and is_loopback(parse_listen(listen, DashboardError)[0]):
        made = new_password()
        settings = dataclasses.replace(settings, password_hash=hash_password(made))
    store = Store(db_path or paths.dashboard_db)
    try:
        dashboard = Dashboard(
            config,
            settings,
            listen,
            store,
            insecure_no_login=insecure_no_login,
            sessions_path=paths.dashboard_config.with_name("dashboard-sessions.json"),
        )
    except SupervisorError:
        store.close()
        raise
    if made is not None and settings.password_hash is not None:
        write_password_hash(paths.dashboard_config, settings.password_hash)
        click.echo(
            f"The dashboard's login password (shown only this once; its hash is in {paths.dashboard_config}):\n"
            f"    {made}\n"
            f"Open {dashboard.url}#password={made} to log in. Change it with 'supervisor dashboard passwd --write'.",
            err=True,
        )
    stop_on_signals(dashboard.stop)
    dashboard.run()


@dashboard_grp.command("passwd")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--write", is_flag=True, help="Store the hash in $SUPERVISOR_HOME/dashboard.toml (mode 600).")
@click.pass_context
def dashboard_passwd_cmd(ctx: click.Context, from_stdin: bool, write: bool) -> None:
    """Hash a dashboard password: print it, or store it with --write.

    \b
    Examples:
      supervisor dashboard passwd --write
      printf '%s\\n' "$PASS" | supervisor dashboard passwd --stdin   # prints the hash
    """
    from supervisor.fleet.dashboard.auth import hash_password, write_password_hash

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Dashboard password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 8:
        msg = "the dashboard password must have at least 8 characters. Choose a longer one."
        raise SupervisorError(msg)
    encoded = hash_password(password)
    if not write:
        click.echo(encoded)
        return
    target = get_paths(ctx).dashboard_config
    write_password_hash(target, encoded)
    click.echo(f"wrote the password hash to {target}; restart the dashboard to use it.", err=True)


@click.group("events")
def events_grp() -> None:
    """Receive webhooks (TradingView alerts...) and deliver them to bots as external events."""


@events_grp.command("serve")
@broker_options
@_agent_option("--namespace", help="Hummingbot topic namespace. Default: hbot.")
@_agent_option(
    "--routes",
    "routes_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Routes TOML. Default: $SUPERVISOR_HOME/events.toml.",
)
@_agent_option("--listen", help="HOST:PORT to serve on. Default: events.toml's receiver.listen or 127.0.0.1:8090.")
@click.pass_context
def events_serve_cmd(
    ctx: click.Context,
    broker: BrokerOptions,
    namespace: str | None,
    routes_file: Path | None,
    listen: str | None,
) -> None:
    """Run the webhook receiver in the foreground: POST /hooks/ROUTE -> journal -> broker.

    \b
    Example ($SUPERVISOR_HOME/events.toml):
      [routes.btc-long]
      token = "a-long-random-secret"
      event = "signals.btc.long"
      targets = ["host-1/mm-1"]
    Then: curl -d '{"side":"buy"}' 'http://127.0.0.1:8090/hooks/btc-long?token=…'
    """
    from supervisor.events.config import load_events_config
    from supervisor.events.journal import Journal
    from supervisor.events.receiver import Receiver

    paths = get_paths(ctx)
    routes_path = routes_file or paths.events_config
    events = load_events_config(routes_path)
    config = broker.load(paths, namespace=namespace)
    log_info_to_console(ctx)
    if routes_path.stat().st_mode & 0o077:
        logger.warning("%s holds the routes' tokens but others may read it: chmod 600 it", routes_path)
    journal = Journal(paths.events_journal)
    try:
        receiver = Receiver(events, config, journal, audit_path=paths.audit_log, listen=listen)
    except SupervisorError:
        journal.close()
        raise
    stop_on_signals(receiver.stop)
    receiver.run()


@events_grp.command("ls")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=20, show_default=True, help="Events to show.")
@click.option("--route", help="Only this route's events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with each event's body).")
@click.pass_context
def events_ls_cmd(ctx: click.Context, limit: int, route: str | None, as_json: bool) -> None:
    """List recent external events, newest first: route, targets, status.

    \b
    queued     not yet sent, or sent and not yet confirmed
    waiting    its target's agent is offline, or its plugin bot is not running
    delivered  its agent confirmed it typed it into the console
    published  a plugin bot's broker acknowledged it (its bridge cannot confirm)
    expired    not delivered within the route's max_age; never sent again
    failed     no such target, or its agent refused it (the note says why)
    """
    import datetime

    from supervisor.events.journal import Journal

    path = get_paths(ctx).events_journal
    entries = []
    if path.exists():
        journal = Journal(path, read_only=True)
        try:
            entries = journal.recent(limit, route)
        finally:
            journal.close()
    if as_json:
        render.print_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        click.echo(f"no events yet (journal {path}).", err=True)
        return
    rows = [
        [
            str(entry.id),
            datetime.datetime.fromtimestamp(entry.received).strftime("%Y-%m-%d %H:%M:%S"),
            entry.route,
            entry.event,
            ",".join(entry.targets),
            entry.status,
            render.clip(entry.error or entry.body.decode("utf-8", "replace"), 40),
        ]
        for entry in entries
    ]
    render.table(["ID", "RECEIVED", "ROUTE", "EVENT", "TARGETS", "STATUS", "NOTE"], rows, colour_col=5)


COMMANDS: tuple[click.Command, ...] = (agent_cmd, service_grp, fleet_grp, dashboard_grp, events_grp)
"""The commands this module adds to the ``supervisor`` group."""
