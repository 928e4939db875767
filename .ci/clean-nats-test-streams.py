#!/usr/bin/env python3
"""Deletes the JetStream streams earlier test runs left on the local NATS server.

The events tests create a stream per test topic (`palisade-<topic>`, the topic named by
the testkit's `unique_name` or the conformance suite; the `outbox_relay` example's
`orders.<8 hex digits>`, which the stream name spells `orders_<hex>_<name hash>`), and a
test that ends, passing or not, leaves it behind. CI runs on one machine would pile them
up, so `.ci/run` calls this before the tests. Only streams with names in those three
shapes, and created more than ten minutes ago (so a test running meanwhile keeps its
own), are deleted.

Speaks the NATS text protocol over a plain socket (no client library to install):
`$JS.API.STREAM.NAMES` pages through the stream names, `$JS.API.STREAM.DELETE.<name>`
deletes one. Hygiene only: any failure is reported and the script exits 0.
"""

import json
import re
import socket
import sys
from datetime import datetime, timedelta, timezone

TEST_STREAM = re.compile(
    r"^palisade-(conformance-[0-9a-f]{32}|.*_[0-9]+_[0-9]+_[0-9a-f]{8}"
    r"|orders_[0-9a-f]{8}_[0-9a-f]{16}$)(\b|[._-])"
)
INBOX = "_INBOX.palisade_ci_clean"
MIN_AGE = timedelta(minutes=10)


def created(info):
    """When a stream was created, from its `$JS.API.STREAM.INFO` reply (RFC 3339 with
    up to nine fraction digits, which `fromisoformat` takes only up to six of)."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", info.get("created", ""))
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Nats:
    def __init__(self, host="127.0.0.1", port=4222):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        self.line()  # INFO
        self.send('CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        self.send(f"SUB {INBOX} 1\r\n")

    def send(self, text):
        self.sock.sendall(text.encode())

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("nats closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def payload(self, size):
        while len(self.buf) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("nats closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def request(self, subject, body):
        data = json.dumps(body).encode()
        self.send(f"PUB {subject} {INBOX} {len(data)}\r\n{data.decode()}\r\n")
        while True:
            line = self.line()
            if line.startswith("PING"):
                self.send("PONG\r\n")
            elif line.startswith("MSG "):
                return json.loads(self.payload(int(line.split()[-1])) or b"{}")
            elif line.startswith("-ERR"):
                raise ConnectionError(line)


def main():
    try:
        nats = Nats()
        names, offset = [], 0
        while True:
            page = nats.request("$JS.API.STREAM.NAMES", {"offset": offset})
            batch = page.get("streams") or []
            names += batch
            offset += len(batch)
            if not batch or offset >= page.get("total", 0):
                break
        now = datetime.now(timezone.utc)
        stale = [
            name
            for name in names
            if TEST_STREAM.match(name)
            and now - created(nats.request(f"$JS.API.STREAM.INFO.{name}", {})) > MIN_AGE
        ]
        for name in stale:
            nats.request(f"$JS.API.STREAM.DELETE.{name}", {})
        print(f"nats: deleted {len(stale)} test streams of {len(names)}")
    except (OSError, ValueError) as error:
        print(f"warning: could not clean test streams from nats: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
