"""A console bot with its own MQTT bridge, standing in for Hummingbot's in the agent tests.

It connects after ``BRIDGE_DELAY`` seconds (the start-up window), subscribes to
``hbot/{BOT_NAME}/+``, says ``online`` on ``status_updates`` (as Hummingbot's
bridge does after subscribing), beats on ``hb`` and answers every well-formed
request with ``"bridge <command> <its argv tail>"`` (a start of a conf named
``missing…`` with 400, as a conf the bot cannot read). Malformed requests get no
reply, as from the real bot. ``stop`` and ``exit`` on stdin end it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

NAME = os.environ["BOT_NAME"]
PORT = int(os.environ["MQTT_PORT"])
DELAY = float(os.environ.get("BRIDGE_DELAY", "0"))
ONLINE_DELAY = float(os.environ.get("ONLINE_DELAY", "0"))
REPLY_DELAY = float(os.environ.get("REPLY_DELAY", "0.04"))
USERNAME = os.environ.get("MQTT_USERNAME", "")
ARGS = " ".join(sys.argv[1:])


def on_message(client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
    command = message.topic.rsplit("/", 1)[-1]
    if command in ("hb", "status_updates", "log", "notify"):
        return
    try:
        request = json.loads(message.payload)
        reply_to = request["header"]["reply_to"]
        data = request["data"]
        if not isinstance(data, dict) or not isinstance(data.get("async_backend", True), bool):
            return  # the real bridge fails validation silently
    except (ValueError, KeyError, TypeError):
        return
    time.sleep(REPLY_DELAY)  # Hummingbot's bridge answers in about 40 ms (reference), not at once
    body = {"header": {"reply_to": "", "timestamp": int(time.time() * 1000)}}
    if command == "start" and str(data.get("conf") or "").startswith("missing"):
        # As Hummingbot refuses a conf it cannot read: nothing starts.
        body["data"] = {"status": 400, "msg": f"No such file: {data['conf']}"}
    else:
        body["data"] = {"status": 200, "msg": f"bridge {command} {ARGS}".strip()}
    client.publish(reply_to, json.dumps(body), qos=1)
    print(f"bridge answered {command}", flush=True)


def main() -> None:
    print(f"bridge-bot starting {ARGS}", flush=True)
    time.sleep(DELAY)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge-{NAME}")
    client.on_message = on_message
    if USERNAME:
        client.username_pw_set(USERNAME, os.environ.get("MQTT_PASSWORD", ""))
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", PORT)
    client.loop_start()
    client.subscribe(f"hbot/{NAME}/+", qos=1)
    subscribed.wait(10)  # like Hummingbot's bridge: "online" only once it listens
    print("bridge-bot subscribed", flush=True)
    time.sleep(ONLINE_DELAY)  # listening already, not yet said so: the window a request can fall into
    online = {"timestamp": int(time.time() * 1000), "type": "availability", "msg": "online"}
    client.publish(f"hbot/{NAME}/status_updates", json.dumps(online))
    print("bridge-bot bridge connected", flush=True)

    def beat() -> None:
        while True:
            client.publish(f"hbot/{NAME}/hb", json.dumps({"ts": time.time_ns() // 1000}))
            time.sleep(1)

    threading.Thread(target=beat, daemon=True).start()
    for line in sys.stdin:
        if line.strip() in ("stop", "exit"):
            break
    client.loop_stop()


if __name__ == "__main__":
    main()
