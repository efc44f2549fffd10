"""example-bot: a small console bot that behaves like a trading bot's console.

It prints a prompt, answers start/stop/status/import/history/exit, and logs a
line every second. While a strategy runs it pretends to trade: every third tick
a simulated fill is logged and kept for ``history``, and each tick carries the
running figures (pnl, volume). Each command also logs a line before its answer,
as a real bot's log handlers do. bot-supervisor's demo and tests run it; it
needs only the Python standard library.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time

PROMPT = "example-bot >>> "


class Bot:
    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self.strategy: str | None = None
        self.running_since: float | None = None
        self.ticks = 0
        self.trades: list[dict[str, object]] = []
        self.volume = 0.0
        self.pnl = 0.0
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(f"{text}\n")
            sys.stdout.flush()

    def log(self, text: str) -> None:
        self.say(f"{time.strftime('%H:%M:%S')} [{self.name}] {text}")

    def ticker(self) -> None:
        while True:
            time.sleep(self.interval)
            self.ticks += 1
            if not self.running_since:
                self.log(f"tick {self.ticks} (idle)")
                continue
            if self.ticks % 3 == 0:
                self.fill()
            self.log(f"tick {self.ticks} (running {self.strategy}) pnl={self.pnl:.4f} volume={self.volume:.2f}")

    def fill(self) -> None:
        side = "BUY" if len(self.trades) % 2 == 0 else "SELL"
        price = round(100 + self.ticks * 0.1, 2)
        amount = 0.5
        trade = {
            "id": f"ex-{len(self.trades) + 1}",
            "market": "example_exchange",
            "symbol": "EXAMPLE-USDT",
            "trade_type": side,
            "price": price,
            "amount": amount,
            "timestamp": int(time.time() * 1000),
        }
        self.trades.append(trade)
        self.volume += price * amount
        self.pnl += (0.05 if side == "SELL" else -0.01) * amount
        self.log(f"filled {side} {amount} EXAMPLE-USDT @ {price} (order {trade['id']})")

    def handle(self, line: str) -> bool:
        if line.startswith("alert "):  # an external event: name, then the alert's text as it came
            name, _, text = line[len("alert ") :].partition(" ")
            self.say(f"ALERT {name}: {text}")
            return True
        try:
            words = shlex.split(line)
        except ValueError as e:
            self.say(f"error: {e}")
            return True
        if not words:
            return True
        cmd, args = words[0], words[1:]
        self.log(f"console command: {cmd}")
        if cmd == "start":
            parser = argparse.ArgumentParser(prog="start", add_help=False, exit_on_error=False)
            parser.add_argument("--script")
            parser.add_argument("--conf")
            try:
                opts = parser.parse_args(args)
            except (argparse.ArgumentError, SystemExit):
                self.say("usage: start [--script FILE] [--conf FILE]")
                return True
            if self.running_since:
                self.say('The bot is already running - please run "stop" first')
                return True
            self.strategy = opts.script or self.strategy or "default"
            self.running_since = time.time()
            extra = f" with config {opts.conf}" if opts.conf else ""
            self.say(f"Strategy {self.strategy} started{extra}.")
        elif cmd == "stop":
            if args not in ([], ["--keep-orders"]):
                self.say("usage: stop [--keep-orders]")
                return True
            if self.running_since and args:
                self.say(f"Stopping strategy {self.strategy}: open orders left in place.")
            elif self.running_since:
                self.say(f"Stopping strategy {self.strategy}: cancelling open orders... done.")
            else:
                self.say("No strategy is running.")
            self.running_since = None
        elif cmd == "status":
            if self.running_since:
                self.say(
                    f"Strategy {self.strategy} running for {time.time() - self.running_since:.0f}s, ticks {self.ticks}."
                )
            else:
                self.say("No strategy is currently running!")
        elif cmd == "import":
            if not args:
                self.say("Empty strategy_name given!")
            else:
                self.strategy = args[0]
                self.say(f"Configuration from {args[0]} file is imported.")
        elif cmd == "history":
            if not self.trades:
                self.say(f"No trades yet ({self.ticks} ticks).")
            for trade in self.trades:
                self.say(" ".join(["trade", *(f"{key}={value}" for key, value in trade.items())]))
            if self.trades:
                self.say(f"{len(self.trades)} trade(s), volume {self.volume:.2f}, pnl {self.pnl:.4f}.")
        elif cmd == "balance":
            if len(args) == 4 and args[0] == "limit":
                self.say(f"Balance limit of {args[2]} on {args[1]}: {args[3]}.")
            elif len(args) == 3 and args[0] == "paper":
                self.say(f"Paper balance of {args[1]}: {args[2]}.")
            else:
                self.say("usage: balance limit EXCHANGE ASSET AMOUNT | balance paper ASSET AMOUNT")
        elif cmd in ("exit", "quit"):
            self.say("Bye.")
            return False
        else:
            self.say(f"Unknown command: {cmd}. Try start, stop, status, import, history, balance or exit.")
        return True

    def run(self) -> int:
        self.say(f"example-bot '{self.name}' ready (pid {os.getpid()}).")
        threading.Thread(target=self.ticker, daemon=True).start()
        while True:
            with self.lock:
                sys.stdout.write(PROMPT)
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                return 0
            if not self.handle(line.strip()):
                return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default=os.environ.get("SUPERVISOR_INSTANCE", "example"))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("EXAMPLE_BOT_INTERVAL", "1")))
    opts = parser.parse_args()
    return Bot(opts.name, opts.interval).run()


if __name__ == "__main__":
    sys.exit(main())
