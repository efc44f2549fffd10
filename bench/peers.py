"""The things measured side by side: our CLI, supervisord 4.x, pm2, raw tmux, mosquitto and the agent.

Installs the peers under ``bench/_peers`` (git-ignored) and runs each in the bench's temp root.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import time
import typing as t
from pathlib import Path

import psutil
from common import BOT, PEERS_DIR, PYTHON, SUPERVISOR, Env, Procs, bot_pids, free_port, kill_pids, log, run, wait_until

SUPD_VENV = PEERS_DIR / "supervisord-venv"
PM2_PREFIX = PEERS_DIR / "pm2"
PLOT_VENV = PEERS_DIR / "plot-venv"
PM2 = PM2_PREFIX / "node_modules" / ".bin" / "pm2"


# -- installs ----------------------------------------------------------------------------


def _venv_with(venv: Path, requirement: str, probe: str) -> None:
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([str(python), "-I", "-c", probe], capture_output=True, check=False).returncode == 0
    ):
        return
    log(f"installing {requirement} into {venv}")
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement], check=True)


def install_peers() -> None:
    """Install supervisor 4.x, pm2 and matplotlib into their own places, once."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    # PyPI's `supervisor` shares our import name: never in the project's venv.
    _venv_with(SUPD_VENV, "supervisor>=4,<5", "import supervisor.supervisord")
    _venv_with(PLOT_VENV, "matplotlib", "import matplotlib")
    if not PM2.exists():
        log("installing pm2 from npm")
        subprocess.run(
            ["npm", "install", "--prefix", str(PM2_PREFIX), "--no-audit", "--no-fund", "--loglevel=error", "pm2"],
            check=True,
        )


# -- the bench bot -----------------------------------------------------------------------


def bench_origin(env: Env) -> tuple[Path, Path]:
    """Create the bench bot's git origin and recipe in the temp root; return (origin, recipe)."""
    origin = env.root / "origin"
    origin.mkdir()
    shutil.copy(BOT, origin / "bot.py")
    git = ["git", "-C", str(origin), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    run([*git, "init", "-q", "-b", "main"], env=env.env)
    run([*git, "add", "bot.py"], env=env.env)
    run([*git, "commit", "-q", "-m", "bench bot"], env=env.env)
    recipe = env.root / "benchbot.yaml"
    recipe.write_text(
        "name: benchbot\n"
        "description: the bench's tiny bot\n"
        "source:\n  repo: set-by-bench\n  ref: main\n"
        "run:\n  command: '{python} bot.py --name {name}'\n  ready: 'benchbot .* ready'\n  ready_timeout: 20\n"
        "console:\n  quit: [exit]\n  quit_delay: 0.1\n"
        "mqtt:\n  plugin: false\n"
    )
    shutil.copy(BOT, env.root / "bot.py")  # the peers run this copy: the very same program
    return origin, recipe


def sweep_bots(env: Env) -> None:
    """Kill any bench bot still alive whose program or folder is under this run's temp root."""
    root = str(env.root)
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = proc.info["cmdline"] or []
        if any(part.endswith("bot.py") for part in cmd) and (
            any(part.startswith(root) for part in cmd) or (proc.info["cwd"] or "").startswith(root)
        ):
            pids.append(proc.info["pid"])
    if pids:
        log(f"sweeping {len(pids)} leftover bots")
        kill_pids(pids)


def _reap(prefix: str, names: t.Collection[str], root: Path) -> None:
    """Wait for a fleet's bots to go; kill by pid any of this run's that outlive their supervisor."""
    if not wait_until(lambda: not bot_pids(prefix, set(names), root), 15):
        kill_pids(bot_pids(prefix, set(names), root).values())


# -- our CLI ---------------------------------------------------------------------------------


class Ours:
    """bot-supervisor instances in one home on one private tmux socket."""

    prefix = "o"

    def __init__(self, env: Env, procs: Procs, home: Path, socket_name: str, origin: Path, recipe: Path) -> None:
        self.env = env.with_home(home, socket_name)
        self.root = env.root
        self.home = home
        self.socket_name = socket_name
        self.origin = origin
        self.recipe = recipe
        self.names: list[str] = []
        procs.on_cleanup(f"tmux server {socket_name}", self.kill_server)

    def cli(self, *args: str) -> list[str]:
        """Return the argv of one ``supervisor`` command."""
        return [SUPERVISOR, *args]

    def tmux(self, *args: str) -> list[str]:
        """Return the argv of one tmux command on our private socket."""
        return ["tmux", "-L", self.socket_name, *args]

    def grow(self, count: int, workers: int = 2) -> None:
        """Create instances until there are ``count`` (``supervisor new`` each, two at a time)."""
        wanted = [f"{self.prefix}{i:03d}" for i in range(len(self.names), count)]

        def new(name: str) -> None:
            run(self.cli("new", name, "-r", str(self.recipe), "--repo", str(self.origin)), env=self.env, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(new, wanted))
        self.names += wanted

    def server_pid(self) -> int | None:
        """Return the pid of our tmux server, if it runs."""
        proc = run(self.tmux("display-message", "-p", "#{pid}"), env=self.env, check=False)
        return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None

    def kill_server(self) -> None:
        """Stop our tmux server by its pid (its sessions' bots get SIGHUP) and wait for the bots to go."""
        pid = self.server_pid()
        if pid is not None:
            kill_pids([pid])
        _reap(self.prefix, self.names, self.root)

    def start_all(self) -> None:
        """Start every instance and wait for their ready lines (untimed set-up)."""
        # `--wait` where start has it (its default then returns before the ready lines); else the default waits.
        proc = run(self.cli("start", "--all", "--wait"), env=self.env, timeout=600, check=False)
        if proc.returncode == 2 and "--wait" in proc.stderr:
            proc = run(self.cli("start", "--all"), env=self.env, timeout=600, check=False)
        if proc.returncode != 0:
            msg = f"supervisor start --all exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            raise RuntimeError(msg)

    def running(self) -> int:
        """Return how many of our bots are alive."""
        return len(bot_pids(self.prefix, set(self.names), self.root))


# -- supervisord -------------------------------------------------------------------------------


class Supervisord:
    """supervisord 4.x with one program per bot, on a private unix socket."""

    prefix = "s"

    def __init__(self, env: Env, procs: Procs) -> None:
        self.env = env.env
        self.root = env.root
        self.procs = procs
        self.dir = env.root / "supd"
        (self.dir / "conf.d").mkdir(parents=True)
        (self.dir / "logs").mkdir()
        self.conf = self.dir / "supervisord.conf"
        self.bot = env.root / "bot.py"
        self.names: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(
            f"[unix_http_server]\nfile={self.dir}/supervisor.sock\n\n"
            f"[supervisord]\nnodaemon=true\nlogfile={self.dir}/supervisord.log\npidfile={self.dir}/supervisord.pid\n"
            f"childlogdir={self.dir}/logs\nminfds=4096\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{self.dir}/supervisor.sock\n\n"
            f"[include]\nfiles = {self.dir}/conf.d/*.ini\n"
        )

    def ctl(self, *args: str) -> list[str]:
        """Return the argv of one supervisorctl command."""
        return [str(SUPD_VENV / "bin" / "supervisorctl"), "-c", str(self.conf), *args]

    def grow(self, count: int) -> None:
        """Add programs until there are ``count`` (not started: autostart=false)."""
        for i in range(len(self.names), count):
            name = f"{self.prefix}{i:03d}"
            # startsecs=0: RUNNING at spawn, like pm2 and without a fixed 1 s wait; the bench
            # itself then waits until every bot process is alive.
            (self.dir / "conf.d" / f"{name}.ini").write_text(
                f"[program:{name}]\ncommand={PYTHON} {self.bot} --name {name}\nautostart=false\nautorestart=false\n"
                f"startsecs=0\nstdout_logfile={self.dir}/logs/{name}.log\nredirect_stderr=true\n"
            )
            self.names.append(name)
        if self.proc is None:
            self.proc = self.procs.spawn(
                [str(SUPD_VENV / "bin" / "supervisord"), "-c", str(self.conf)],
                env=self.env,
                log_path=self.dir / "stdout.log",
            )
            self.procs.on_cleanup("supervisord", self.shutdown)
            if not wait_until(lambda: run(self.ctl("pid"), env=self.env, check=False).returncode == 0, 20, 0.2):
                msg = f"supervisord did not come up; see {self.dir}"
                raise RuntimeError(msg)
        else:
            run(self.ctl("update"), env=self.env, timeout=120)

    def shutdown(self) -> None:
        """Stop supervisord (and so its programs) by its pid."""
        if self.proc is not None:
            run(self.ctl("stop", "all"), env=self.env, timeout=300, check=False)
            self.procs.stop(self.proc, timeout=30)
            self.proc = None
        _reap(self.prefix, self.names, self.root)

    def start_all(self) -> None:
        """Start every program (untimed set-up)."""
        run(self.ctl("start", "all"), env=self.env, timeout=600)

    def stop_all(self) -> None:
        """Stop every program and wait for the bots to be gone."""
        run(self.ctl("stop", "all"), env=self.env, timeout=600, check=False)
        wait_until(lambda: not bot_pids(self.prefix, set(self.names), self.root), 30)

    @property
    def pid(self) -> int | None:
        """Return supervisord's pid."""
        return self.proc.pid if self.proc else None

    def running(self) -> int:
        """Return how many of its bots are alive."""
        return len(bot_pids(self.prefix, set(self.names), self.root))


# -- pm2 -----------------------------------------------------------------------------------------


class Pm2:
    """pm2 with one fork-mode app per bot, with its own PM2_HOME."""

    prefix = "p"

    def __init__(self, env: Env, procs: Procs) -> None:
        self.env = env.env
        self.root = env.root
        self.home = Path(env.env["PM2_HOME"])
        self.bot = env.root / "bot.py"
        self.ecosystem = env.root / "pm2-ecosystem.json"
        self.names: list[str] = []
        procs.on_cleanup("pm2 daemon", self.kill)

    def cmd(self, *args: str) -> list[str]:
        """Return the argv of one pm2 command."""
        return [str(PM2), *args]

    def grow(self, count: int) -> None:
        """Write an ecosystem file with ``count`` apps (started by :meth:`start_all`)."""
        self.names = [f"{self.prefix}{i:03d}" for i in range(count)]
        apps = [
            {
                "name": name,
                "script": str(self.bot),
                "interpreter": PYTHON,
                "args": ["--name", name],
                "autorestart": False,
                "out_file": str(self.home / "logs" / f"{name}.log"),
                "error_file": str(self.home / "logs" / f"{name}.log"),
            }
            for name in self.names
        ]
        self.ecosystem.write_text(json.dumps({"apps": apps}))

    def start_all(self) -> None:
        """Start every app of the ecosystem file (they must not exist yet)."""
        run(self.cmd("start", str(self.ecosystem)), env=self.env, timeout=600)

    def delete_all(self) -> None:
        """Delete every app and wait for the bots to be gone."""
        run(self.cmd("delete", "all"), env=self.env, timeout=600, check=False)
        wait_until(lambda: not bot_pids(self.prefix, set(self.names), self.root), 30)

    @property
    def pid(self) -> int | None:
        """Return the pm2 daemon's pid (from PM2_HOME/pm2.pid)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.home / "pm2.pid").read_text().strip())
            if psutil.pid_exists(pid):
                return pid
        return None

    def kill(self) -> None:
        """Stop the pm2 daemon: ``pm2 kill``, then its pid if it is still there."""
        if not (self.home / "pm2.pid").exists():
            return
        pid = self.pid
        run(self.cmd("kill"), env=self.env, timeout=60, check=False)
        if pid is not None:
            kill_pids([pid])
        _reap(self.prefix, self.names, self.root)

    def running(self) -> int:
        """Return how many of its bots are alive."""
        return len(bot_pids(self.prefix, set(self.names), self.root))


# -- mosquitto and the agent -------------------------------------------------------------------


class Mosquitto:
    """A private mosquitto on a free loopback port."""

    def __init__(self, env: Env, procs: Procs) -> None:
        self.port = free_port()
        folder = env.root / "mosquitto"
        folder.mkdir()
        conf = folder / "mosquitto.conf"
        # set_tcp_nodelay: without it the broker's own sends wait on Nagle + delayed ACK (~40 ms a hop).
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "log_type error",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = procs.spawn([binary, "-c", str(conf)], env=env.env, log_path=folder / "mosquitto.log")

        def accepting() -> bool:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            return False

        if not wait_until(accepting, 5, 0.05):
            msg = f"mosquitto did not listen on 127.0.0.1:{self.port}; see {folder / 'mosquitto.log'}"
            raise RuntimeError(msg)

    @property
    def url(self) -> str:
        """Return the broker URL."""
        return f"mqtt://127.0.0.1:{self.port}"


def agent_available(env: dict[str, str]) -> str | None:
    """Return ``None`` when ``supervisor agent`` exists, else why it cannot be measured."""
    proc = run([SUPERVISOR, "agent", "--help"], env=env, check=False, timeout=60)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`supervisor agent --help` exited {proc.returncode} ({last[-1] if last else 'no output'})"
    for option in ("--broker", "--host-id", "--heartbeat-interval", "--state-interval"):
        if option not in proc.stdout:
            return f"`supervisor agent` has no {option} option"
    return None


class Agent:
    """``supervisor agent`` in the foreground, as a recorded child."""

    def __init__(
        self,
        procs: Procs,
        env: dict[str, str],
        broker: str,
        host_id: str,
        heartbeat: float,
        state: float,
        log_path: Path,
    ) -> None:
        self.procs = procs
        argv = [
            SUPERVISOR, "agent", "--broker", broker, "--host-id", host_id,
            "--heartbeat-interval", f"{heartbeat:g}", "--state-interval", f"{state:g}",
        ]  # fmt: skip
        self.log_path = log_path
        self.proc = procs.spawn(argv, env=env, log_path=log_path)

    def alive(self) -> bool:
        """Return whether the agent process still runs."""
        return self.proc.poll() is None

    def log_tail(self) -> str:
        """Return the end of the agent's output."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        return ""

    def stop(self) -> None:
        """Stop the agent by pid (SIGTERM, then SIGKILL)."""
        self.procs.stop(self.proc, timeout=15)


def wait_count(counter: t.Callable[[], int], count: int, timeout: float) -> bool:
    """Wait until ``counter()`` reaches ``count``."""
    return wait_until(lambda: counter() >= count, timeout, 0.02)


def now() -> float:
    """Return a monotonic clock reading."""
    return time.perf_counter()
