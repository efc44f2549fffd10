// bot-supervisor dashboard: one event stream per browser. Every tab of the page connects to this
// SharedWorker, which holds the only /events connection and hands each event to every tab, so many
// tabs never use up the browser's few connections per host (commands would queue behind them).
"use strict";

const EVENTS = ["snapshot", "delta", "performance", "alert", "ack"];
const ports = new Set();
let source = null;
let open = false;

function send(message) {
  for (const port of ports) port.postMessage(message);
}

function connect() {
  if (source && source.readyState !== EventSource.CLOSED) return;
  const current = new EventSource("/events");
  source = current;
  current.addEventListener("open", () => {
    open = true;
    send({ type: "open", joined: false });
  });
  current.addEventListener("error", () => {
    open = false;
    send({ type: current.readyState === EventSource.CLOSED ? "closed" : "error" });
  });
  for (const name of EVENTS) current.addEventListener(name, (event) => send({ type: name, data: event.data }));
}

self.addEventListener("connect", (event) => {
  const port = event.ports[0];
  ports.add(port);
  port.addEventListener("message", ({ data }) => {
    if (data.type === "connect") {
      // A tab joining an open stream missed its first snapshot: it fetches one itself.
      if (open && source && source.readyState === EventSource.OPEN) port.postMessage({ type: "open", joined: true });
      else connect();
    } else if (data.type === "bye") {
      ports.delete(port);
      if (ports.size === 0 && source) {
        source.close();
        source = null;
        open = false;
      }
    }
  });
  port.start();
});
