"""Recipes: how a kind of bot is fetched, installed, run and talked to.

Owns the YAML schema, its validation (every error names file and key) and
template rendering. Imports only :mod:`supervisor.errors`, :mod:`supervisor.paths`,
:mod:`supervisor.consoletext` and, for Hummingbot's command and field names, :mod:`supervisor.mqtt.protocol`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing as t
from pathlib import Path

from supervisor.consoletext import control_characters
from supervisor.errors import InvalidName, RecipeError, RecipeNotFound
from supervisor.mqtt.protocol import CONSOLE_COMMANDS, CONSOLE_FIELDS, STRATEGY_FIELDS
from supervisor.paths import builtin_recipes_dir

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
VAR_RE = re.compile(r"(?<!\$)\{([a-z_][a-z0-9_]*)\}")
OPTIONAL_RE = re.compile(r"\[([^\[\]]*)\]")
BUILTIN_VARS = ("name", "checkout", "python", "home")
RECIPE_SUFFIXES = (".yaml", ".yml")
BUILTIN_PREFIX = "builtin:"
SECRET_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
STRATEGY_VARS = STRATEGY_FIELDS
"""The strategy a start names, as ``{script}``/``{conf}`` in ``run.strategy_args``."""

_TOP_KEYS = {
    "name",
    "description",
    "source",
    "vars",
    "install",
    "run",
    "console",
    "mqtt",
    "detect",
    "config_files",
    "log_files",
    "events",
}
EVENT_NAME_RE = re.compile(r"\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_SOURCE_KEYS = {"repo", "ref"}
_RUN_KEYS = {"command", "prelude", "env", "ready", "ready_timeout", "login", "secrets", "stop", "strategy_args"}
_STOP_KEYS = {"signal", "command", "grace"}
#: Console lines that are variants of a command rather than commands of their own.
CONSOLE_VARIANTS = ("stop_keep_orders",)
_CONSOLE_KEYS = {*CONSOLE_COMMANDS, *CONSOLE_VARIANTS, "quit", "quit_delay", "reply_wait", "answer", "trades"}
_ANSWER_KEYS = {"prompt", "noise", "error", "end"}
_MQTT_KEYS = {"plugin", "config", "values", "log", "log_rate", "events", "performance"}
_EVENT_KEYS = {"match", "type"}


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid instance name, else raise :class:`InvalidName`."""
    if not NAME_RE.fullmatch(name):
        raise InvalidName(name)
    return name


def builtin_source(name: str) -> Path:
    """Return the folder of the bot shipped with the package as ``builtin:NAME``.

    ``NAME`` is a plain folder name; the folder found must lie inside the
    package's recipe folder (no ``..``, no symbolic link leading out).

    Raises
    ------
    RecipeError
        ``NAME`` is not a plain name, or no such folder is shipped.
    """
    root = builtin_recipes_dir().resolve()
    shipped = sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name))
    if not NAME_RE.fullmatch(name) or not (root / name).is_dir() or (root / name).resolve().parent != root:
        msg = (
            f"source '{BUILTIN_PREFIX}{name}' is not a bot shipped with bot-supervisor. "
            f"Built-in sources are: {', '.join(BUILTIN_PREFIX + n for n in shipped) or 'none'}."
        )
        raise RecipeError(msg)
    return root / name


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the bot's code comes from: a git URL, a path, or ``builtin:NAME``."""

    repo: str
    ref: str = "main"

    @property
    def builtin(self) -> str | None:
        """The shipped bot folder's name for ``builtin:NAME`` sources."""
        return self.repo.removeprefix(BUILTIN_PREFIX) if self.repo.startswith(BUILTIN_PREFIX) else None


@dataclasses.dataclass(frozen=True)
class Stop:
    """How a bot without a console reader is stopped gracefully: a signal or a command, then ``grace`` seconds."""

    signal: str | None = None
    command: str | None = None
    grace: float = 30.0


@dataclasses.dataclass(frozen=True)
class Run:
    """How the session runs the bot.

    ``secrets`` maps an environment variable to the key of a per-instance secret
    file; ``login`` is a regex that means "the bot waits at its login dialog".
    """

    command: str
    prelude: str | None = None
    env: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    ready: str | None = None
    ready_timeout: float = 60.0
    login: str | None = None
    secrets: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    stop: Stop | None = None
    strategy_args: str | None = None
    """Appended to ``command`` when the bot is launched with a strategy (``{script}``, ``{conf}``, ``[...]`` groups)."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """How to read the console's answer to a command: regular expressions, searched in each line.

    ``prompt`` is removed from the start of lines, ``noise`` lines (log lines
    the bot prints meanwhile) are left out, and an answer with an ``error``
    line is an error (400 on Hummingbot's topics). The answer is complete when
    a line after the typed command starts with ``end`` (default: the prompt,
    which the bot prints again once it has answered); ``reply_wait`` bounds the wait.
    """

    prompt: str | None = None
    noise: tuple[str, ...] = ()
    error: tuple[str, ...] = ()
    end: str | None = None

    @property
    def end_pattern(self) -> str | None:
        """The pattern that says the answer is complete: ``end``, else the prompt."""
        return self.end or self.prompt


@dataclasses.dataclass(frozen=True)
class Console:
    """What bot-level commands type into the console; ``None`` where the bot has no equivalent."""

    commands: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    quit: tuple[str, ...] = ()
    quit_delay: float = 1.0
    reply_wait: float = 1.0
    answer: Answer = dataclasses.field(default_factory=Answer)
    trades: str | None = None


@dataclasses.dataclass(frozen=True)
class LineEvent:
    """A console line that becomes a ``{ns}/{id}/events`` message of ``type``."""

    match: str
    type: str


@dataclasses.dataclass(frozen=True)
class Mqtt:
    """Whether the bot speaks the Hummingbot protocol itself, and the config keys ``new`` writes."""

    plugin: bool = False
    config: str | None = None
    values: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict)
    log: bool = True
    log_rate: float = 10.0
    events: tuple[LineEvent, ...] = ()
    performance: str | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe."""

    name: str
    source: Source
    run: Run
    path: Path
    description: str = ""
    vars: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    install: tuple[str, ...] = ()
    console: Console = dataclasses.field(default_factory=Console)
    mqtt: Mqtt = dataclasses.field(default_factory=Mqtt)
    detect: str | None = None
    config_files: tuple[str, ...] = ()
    log_files: tuple[str, ...] = ()
    """Globs of the bot's own log files in the checkout; ``logs`` shows the newest of them."""
    builtin: bool = False
    external_events: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The YAML's top-level ``events``: external event name (or ``*``) -> console line the agent types."""

    def settable(self) -> list[str]:
        """Return the keys ``--set`` accepts."""
        return sorted(self.vars)


def _fail(path: Path, key: str, what: str) -> t.NoReturn:
    msg = f"recipe '{path}': key '{key}' {what}. See the recipe format in the README."
    raise RecipeError(msg)


def _table(path: Path, key: str, value: object, allowed: set[str]) -> dict[str, t.Any]:
    if not isinstance(value, dict):
        _fail(path, key, "must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        _fail(
            path, f"{key}.{unknown[0]}" if key else unknown[0], f"is not known (allowed: {', '.join(sorted(allowed))})"
        )
    return value


def _string(path: Path, key: str, value: object, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            _fail(path, key, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        _fail(path, key, "must be a string")
    return str(value)


def _number(path: Path, key: str, value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        _fail(path, key, "must be a non-negative number")
    return float(value)


def _string_list(path: Path, key: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, key, "must be a string or a list of strings")
    return tuple(value)


def _check_printable(path: Path, key: str, text: str) -> None:
    found = control_characters(text)
    if found:
        _fail(path, key, f"holds control characters ({', '.join(found)}); console lines must be printable text")


def _pattern(path: Path, key: str, value: object, *, groups: bool = False) -> str | None:
    text = _string(path, key, value)
    if text is None:
        return None
    try:
        compiled = re.compile(text)
    except re.error as e:
        _fail(path, key, f"is not a valid regular expression ({e})")
    if groups and not compiled.groupindex:
        _fail(path, key, "needs named groups such as (?P<price>[0-9.]+): they become the message's fields")
    return text


def _patterns(path: Path, key: str, value: object) -> tuple[str, ...]:
    texts = _string_list(path, key, value)
    for i, text in enumerate(texts):
        _pattern(path, f"{key}[{i}]", text)
    return texts


def _check_vars(path: Path, key: str, text: str, known: t.Collection[str]) -> None:
    for var in VAR_RE.findall(text):
        if var not in known:
            _fail(path, key, f"uses '{{{var}}}', which is not a variable (known: {', '.join(sorted(known))})")


def _regex(path: Path, key: str, value: object) -> str | None:
    text = _string(path, key, value)
    if text:
        try:
            re.compile(text)
        except re.error as e:
            _fail(path, key, f"is not a valid regular expression ({e})")
    return text


def _secrets(path: Path, value: object, env: t.Mapping[str, str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(path, "run.secrets", "must be a mapping of ENV_NAME: secret-key")
    secrets: dict[str, str] = {}
    for name, key in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            _fail(path, f"run.secrets.{name}", "is not a valid environment variable name")
        if name in env:
            _fail(path, f"run.secrets.{name}", "is also set in run.env; keep it in one place")
        if not isinstance(key, str) or not SECRET_KEY_RE.fullmatch(key):
            _fail(path, f"run.secrets.{name}", "must be a secret key: letters, digits, '-' and '_' (at most 64)")
        secrets[name] = key
    return secrets


def _stop(path: Path, value: object, known: t.Collection[str]) -> Stop | None:
    if value is None:
        return None
    raw = _table(path, "run.stop", value, _STOP_KEYS)
    sig = _string(path, "run.stop.signal", raw.get("signal"))
    if sig is not None:
        sig = sig.upper()
        sig = sig if sig.startswith("SIG") else f"SIG{sig}"
        if sig not in STOP_SIGNALS:
            _fail(path, "run.stop.signal", f"must be one of {', '.join(STOP_SIGNALS)}")
    command = _string(path, "run.stop.command", raw.get("command"))
    if command is not None:
        _check_vars(path, "run.stop.command", command, known)
    if (sig is None) == (command is None):
        _fail(path, "run.stop", "needs exactly one of 'signal' or 'command'")
    return Stop(signal=sig, command=command, grace=_number(path, "run.stop.grace", raw.get("grace"), 30.0))


def _config_files(path: Path, value: object, key: str = "config_files") -> tuple[str, ...]:
    globs = _string_list(path, key, value)
    for i, pattern in enumerate(globs):
        if not pattern or pattern.startswith(("/", "~")) or ".." in Path(pattern).parts:
            _fail(path, f"{key}[{i}]", "must be a path or glob inside the checkout (no '/', '~' or '..')")
    return globs


def parse_recipe(data: object, path: Path, *, builtin: bool = False) -> Recipe:
    """Validate parsed YAML ``data`` read from ``path`` and return the :class:`Recipe`."""
    top = _table(path, "", data, _TOP_KEYS)
    name = _string(path, "name", top.get("name"), required=True)
    assert name is not None
    if not NAME_RE.fullmatch(name):
        _fail(path, "name", "must match [a-z0-9][a-z0-9_-]*")
    source_raw = _table(path, "source", top.get("source"), _SOURCE_KEYS)
    repo = _string(path, "source.repo", source_raw.get("repo"), required=True)
    ref = _string(path, "source.ref", source_raw.get("ref")) or "main"
    assert repo is not None
    if repo.startswith(BUILTIN_PREFIX) and not NAME_RE.fullmatch(repo.removeprefix(BUILTIN_PREFIX)):
        _fail(path, "source.repo", "names no folder shipped with bot-supervisor: use builtin:NAME with a plain name")

    vars_raw = top.get("vars") or {}
    if not isinstance(vars_raw, dict):
        _fail(path, "vars", "must be a mapping")
    variables: dict[str, str] = {}
    for key, value in vars_raw.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            _fail(path, f"vars.{key}", "must be a lowercase identifier")
        if key in BUILTIN_VARS and key != "python":
            _fail(path, f"vars.{key}", "is a built-in variable and cannot be redefined")
        variables[key] = _string(path, f"vars.{key}", value) or ""
    # console-only variables a remote command fills in
    known = {*BUILTIN_VARS, *variables}
    console_known = {*known, *CONSOLE_FIELDS}

    install = _string_list(path, "install", top.get("install"))
    for i, step in enumerate(install):
        _check_vars(path, f"install[{i}]", step, known)

    run_raw = _table(path, "run", top.get("run"), _RUN_KEYS)
    command = _string(path, "run.command", run_raw.get("command"), required=True)
    assert command is not None
    _check_vars(path, "run.command", command, known)
    prelude = _string(path, "run.prelude", run_raw.get("prelude"))
    if prelude:
        _check_vars(path, "run.prelude", prelude, known)
    env_raw = run_raw.get("env") or {}
    if not isinstance(env_raw, dict):
        _fail(path, "run.env", "must be a mapping of NAME: value")
    env: dict[str, str] = {}
    for key, value in env_raw.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            _fail(path, f"run.env.{key}", "is not a valid environment variable name")
        env[key] = _string(path, f"run.env.{key}", value) or ""
        _check_vars(path, f"run.env.{key}", env[key], known)
    ready = _regex(path, "run.ready", run_raw.get("ready"))
    login = _regex(path, "run.login", run_raw.get("login"))
    if login and not ready:
        _fail(path, "run.login", "needs run.ready too (it tells when the login is over)")
    strategy_args = _string(path, "run.strategy_args", run_raw.get("strategy_args"))
    if strategy_args:
        _check_vars(path, "run.strategy_args", strategy_args, {*known, *STRATEGY_VARS})
    run = Run(
        command=command,
        prelude=prelude,
        env=env,
        ready=ready,
        ready_timeout=_number(path, "run.ready_timeout", run_raw.get("ready_timeout"), 60.0),
        login=login,
        secrets=_secrets(path, run_raw.get("secrets"), env),
        stop=_stop(path, run_raw.get("stop"), known),
        strategy_args=strategy_args,
    )

    console_raw = _table(path, "console", top.get("console") or {}, _CONSOLE_KEYS)
    commands: dict[str, str] = {}
    for key in (*CONSOLE_COMMANDS, *CONSOLE_VARIANTS):
        value = _string(path, f"console.{key}", console_raw.get(key))
        if value is not None:
            _check_vars(path, f"console.{key}", value, console_known)
            _check_printable(path, f"console.{key}", value)
            commands[key] = value
    quit_lines = _string_list(path, "console.quit", console_raw.get("quit"))
    for i, line in enumerate(quit_lines):
        _check_printable(path, f"console.quit[{i}]", line)
    answer_raw = _table(path, "console.answer", console_raw.get("answer") or {}, _ANSWER_KEYS)
    console = Console(
        commands=commands,
        quit=quit_lines,
        quit_delay=_number(path, "console.quit_delay", console_raw.get("quit_delay"), 1.0),
        reply_wait=_number(path, "console.reply_wait", console_raw.get("reply_wait"), 1.0),
        answer=Answer(
            prompt=_pattern(path, "console.answer.prompt", answer_raw.get("prompt")),
            noise=_patterns(path, "console.answer.noise", answer_raw.get("noise")),
            error=_patterns(path, "console.answer.error", answer_raw.get("error")),
            end=_pattern(path, "console.answer.end", answer_raw.get("end")),
        ),
        trades=_pattern(path, "console.trades", console_raw.get("trades"), groups=True),
    )

    mqtt_raw = _table(path, "mqtt", top.get("mqtt") or {}, _MQTT_KEYS)
    plugin = mqtt_raw.get("plugin", False)
    if not isinstance(plugin, bool):
        _fail(path, "mqtt.plugin", "must be true or false")
    values = mqtt_raw.get("values") or {}
    if not isinstance(values, dict):
        _fail(path, "mqtt.values", "must be a mapping of dotted.key: value")
    log = mqtt_raw.get("log", True)
    if not isinstance(log, bool):
        _fail(path, "mqtt.log", "must be true or false")
    log_rate = _number(path, "mqtt.log_rate", mqtt_raw.get("log_rate"), 10.0)
    if log_rate <= 0:
        _fail(path, "mqtt.log_rate", "must be above 0 (lines per second); set mqtt.log: false to publish none")
    events_raw = mqtt_raw.get("events") or []
    if not isinstance(events_raw, list):
        _fail(path, "mqtt.events", "must be a list of {match: REGEX, type: NAME}")
    events: list[LineEvent] = []
    for i, item in enumerate(events_raw):
        entry = _table(path, f"mqtt.events[{i}]", item, _EVENT_KEYS)
        match = _pattern(path, f"mqtt.events[{i}].match", entry.get("match"))
        kind = _string(path, f"mqtt.events[{i}].type", entry.get("type"), required=True)
        if match is None:
            _fail(path, f"mqtt.events[{i}].match", "is required")
        assert kind is not None
        events.append(LineEvent(match=match, type=kind))
    mqtt = Mqtt(
        plugin=plugin,
        config=_string(path, "mqtt.config", mqtt_raw.get("config")),
        values=values,
        log=log,
        log_rate=log_rate,
        events=tuple(events),
        performance=_pattern(path, "mqtt.performance", mqtt_raw.get("performance"), groups=True),
    )
    if values and not mqtt.config:
        _fail(path, "mqtt.config", "is required when mqtt.values is given")

    detect = _string(path, "detect", top.get("detect"))
    if detect:
        try:
            re.compile(detect)
        except re.error as e:
            _fail(path, "detect", f"is not a valid regular expression ({e})")

    external_raw = top.get("events") or {}
    if not isinstance(external_raw, dict):
        _fail(path, "events", "must be a mapping of event name: console line")
    external_events: dict[str, str] = {}
    for key, value in external_raw.items():
        if not isinstance(key, str) or not EVENT_NAME_RE.fullmatch(key):
            _fail(path, f"events.{key}", "is not an event name (letters, digits, '-', '_' joined by '.'; or '*')")
        event_line = _string(path, f"events.{key}", value, required=True)
        assert event_line is not None
        _check_printable(path, f"events.{key}", event_line)
        external_events[key] = event_line

    return Recipe(
        name=name,
        description=_string(path, "description", top.get("description")) or "",
        source=Source(repo=repo, ref=ref),
        vars=variables,
        install=install,
        run=run,
        console=console,
        mqtt=mqtt,
        detect=detect,
        config_files=_config_files(path, top.get("config_files")),
        log_files=_config_files(path, top.get("log_files"), "log_files"),
        path=path,
        builtin=builtin,
        external_events=external_events,
    )


def load_recipe(path: Path, *, builtin: bool = False) -> Recipe:
    """Read and validate the recipe file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        msg = f"recipe '{path}': cannot be read ({e.strerror}). Check the path."
        raise RecipeError(msg) from e
    except UnicodeDecodeError as e:
        msg = f"recipe '{path}': not UTF-8 text (byte {e.start}). Save it as UTF-8 and try again."
        raise RecipeError(msg) from e
    import yaml  # only a recipe load needs it (~15 ms to import)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        msg = f"recipe '{path}': not valid YAML{where}. Fix the file and try again."
        raise RecipeError(msg) from e
    if data is None:
        msg = f"recipe '{path}': the file is empty. Write a recipe in it or remove it."
        raise RecipeError(msg)
    return parse_recipe(data, path, builtin=builtin)


def recipe_dirs(user_dir: Path) -> list[tuple[Path, bool]]:
    """Return the folders searched for recipes, user first, with a flag telling built-in ones."""
    return [(user_dir, False), (builtin_recipes_dir(), True)]


def list_recipes(user_dir: Path) -> list[Recipe]:
    """Return every recipe found, a user recipe hiding a built-in of the same name.

    A file that does not load is skipped with one warning naming it; :func:`find_recipe` of its
    name still raises the error.
    """
    found: dict[str, Recipe] = {}
    for folder, builtin in recipe_dirs(user_dir):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in RECIPE_SUFFIXES and path.is_file():
                try:
                    recipe = load_recipe(path, builtin=builtin)
                except RecipeError as e:
                    # One stray file must not hide every other recipe (nor, through `detect`, the fleet).
                    _warn_skipped(path, e)
                    continue
                found.setdefault(recipe.name, recipe)
    return sorted(found.values(), key=lambda r: r.name)


_skipped: set[tuple[str, str]] = set()


def _warn_skipped(path: Path, error: RecipeError) -> None:
    """Log a broken recipe file once per process and reason (an agent lists recipes again and again)."""
    key = (str(path), str(error))
    if key not in _skipped:
        _skipped.add(key)
        logger.warning("%s (skipped; the other recipes are used)", error)


def find_recipe(ref: str, user_dir: Path) -> Recipe:
    """Return the recipe named ``ref``, or loaded from ``ref`` when it is a path."""
    if ref.endswith(RECIPE_SUFFIXES) or "/" in ref:
        return load_recipe(Path(ref).expanduser().resolve())
    for folder, builtin in recipe_dirs(user_dir):
        for suffix in RECIPE_SUFFIXES:
            candidate = folder / f"{ref}{suffix}"
            if candidate.is_file():
                recipe = load_recipe(candidate, builtin=builtin)
                if recipe.name != ref:
                    _fail(candidate, "name", f"is '{recipe.name}' but the file is named '{ref}'")
                return recipe
    raise RecipeNotFound(ref, [r.name for r in list_recipes(user_dir)])


def render(template: str, values: t.Mapping[str, str], *, optional_groups: bool = False) -> str:
    """Fill ``{var}`` placeholders; with ``optional_groups``, drop ``[...]`` parts whose variables are empty.

    ``${VAR}`` (shell syntax) is left alone.
    """

    def fill(text: str) -> str:
        return VAR_RE.sub(lambda m: str(values.get(m.group(1), "")), text)

    if optional_groups:

        def group(match: re.Match[str]) -> str:
            inner = match.group(1)
            needed = VAR_RE.findall(inner)
            return fill(inner) if all(values.get(v) not in (None, "") for v in needed) else ""

        template = OPTIONAL_RE.sub(group, template)
    return fill(template)


def parse_settings(recipe: Recipe, pairs: t.Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``--set KEY=VALUE`` pairs into recipe variables and ``env.NAME`` environment values."""
    variables: dict[str, str] = {}
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            msg = f"setting '{pair}' is not KEY=VALUE. Example: --set env.API_KEY=abc."
            raise RecipeError(msg)
        if key.startswith("env."):
            name = key[4:]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                msg = f"setting '{pair}': '{name}' is not a valid environment variable name."
                raise RecipeError(msg)
            env[name] = value
        elif key in recipe.vars:
            variables[key] = value
        else:
            choices = ", ".join([*recipe.settable(), "env.NAME"])
            msg = f"setting '{key}' is not known to recipe '{recipe.name}'. Settable keys: {choices}."
            raise RecipeError(msg)
    return variables, env
