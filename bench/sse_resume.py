#!/usr/bin/env python3
"""SSE reconnect storm: N event streams resume with Last-Event-ID after a restart.

Starts the release server itself (a fresh SQLite store, or PostgreSQL with
--postgres URL), opens N streams in one room, and has one HTTP sender post
--rate messages per second. After --before seconds it restarts the server
(SIGKILL, or SIGTERM with --graceful) and every stream reconnects at once:
a new session (guest sessions end with the process), the same room, and the
id of the last message it saw as Last-Event-ID. The sender keeps posting
throughout, retrying while the server is down.

At the end every stream must have received every message the sender got a
200 for, exactly once and in order. Prints how long the storm took until
every stream had caught up, and exits non-zero on any loss.

    bench/sse_resume.py --streams 5000 --rate 20 --before 3 --after 10
"""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"


async def http(port, method, path, body=None):
    reader, writer = await asyncio.open_connection(HOST, port)
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")


async def session(port, nick, room):
    status, body = await http(port, "POST", "/api/connect", {"nickname": nick})
    if status != 200:
        raise OSError(f"connect {nick}: {status} {body}")
    sid = body["data"]["sessionId"]
    status, body = await http(port, "POST", "/api/command", {"sessionId": sid, "command": f"/join {room}"})
    if status != 200 and "already" not in json.dumps(body):
        raise OSError(f"join {nick}: {status} {body}")
    return sid


class Stream:
    def __init__(self, index, room):
        self.nick = f"r{index}"
        self.room = room
        self.ids = []
        self.reconnected_at = None
        self.connections = 0

    async def run(self, port, stop):
        while not stop.is_set():
            try:
                await self.follow(port(), stop)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                pass
            await asyncio.sleep(0.05)

    async def follow(self, port, stop):
        sid = await session(port, self.nick, self.room)
        reader, writer = await asyncio.open_connection(HOST, port)
        last = f"Last-Event-ID: {self.ids[-1]}\r\n" if self.ids else ""
        writer.write(f"GET /api/messages/{self.room}?sessionId={sid} HTTP/1.1\r\nHost: bench\r\n"
                     f"Accept: text/event-stream\r\nConnection: close\r\n{last}\r\n".encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise OSError(status)
        self.connections += 1
        event = None
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            line = line.strip()
            if line.startswith(b"event: "):
                event = line[7:]
            elif line.startswith(b"data: ") and event == b"message":
                message = json.loads(line[6:])
                if message.get("room") == self.room:
                    self.ids.append(message["id"])


async def sender(port, room, rate, stop, acked):
    sid = None
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            if sid is None:
                sid = await session(port(), "sender", room)
            status, body = await http(port(), "POST", "/api/message", {"sessionId": sid, "content": f"m{n}"})
            if status == 200:
                acked.append(body["data"]["id"])
                n += 1
            elif status == 404:
                sid = None
        except OSError:
            sid = None
        await asyncio.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))


def start_server(binary, env, port_tcp, port_http):
    proc = subprocess.Popen([binary], env={**os.environ, **env, "TCP_PORT": str(port_tcp),
                                           "HTTP_PORT": str(port_http), "MSG_RATE": "0", "LOG_LEVEL": "warn"})
    return proc


async def wait_up(port):
    for _ in range(300):
        try:
            status, _ = await http(port, "GET", "/api/health")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("server did not start")


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/baby-discord")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--before", type=float, default=3, help="seconds of chat before the restart")
    ap.add_argument("--after", type=float, default=10, help="seconds of chat after the restart")
    ap.add_argument("--graceful", action="store_true", help="SIGTERM instead of SIGKILL")
    ap.add_argument("--postgres", help="DATABASE_URL (default: a fresh SQLite store)")
    args = ap.parse_args()

    data = tempfile.mkdtemp()
    env = {"DATA_DIR": data}
    if args.postgres:
        env["DATABASE_URL"] = args.postgres
    tcp, port = 19411, 13411
    proc = start_server(args.binary, env, tcp, port)
    await wait_up(port)
    room = "resume"
    status, body = await http(port, "POST", "/api/connect", {"nickname": "creator"})
    creator = body["data"]["sessionId"]
    await http(port, "POST", "/api/command", {"sessionId": creator, "command": f"/create {room}"})
    await http(port, "POST", "/api/disconnect", {"sessionId": creator})

    stop = asyncio.Event()
    streams = [Stream(i, room) for i in range(args.streams)]
    tasks = []
    for i, s in enumerate(streams):
        tasks.append(asyncio.create_task(s.run(lambda: port, stop)))
        if i % 200 == 199:
            await asyncio.sleep(0.1)
    deadline = time.monotonic() + 60
    while sum(1 for s in streams if s.connections) < len(streams) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print(f"{sum(1 for s in streams if s.connections)} streams open")

    acked = []
    send = asyncio.create_task(sender(lambda: port, room, args.rate, stop, acked))
    await asyncio.sleep(args.before)

    proc.send_signal(signal.SIGTERM if args.graceful else signal.SIGKILL)
    proc.wait()
    restarted = time.monotonic()
    before_restart = len(acked)
    proc = start_server(args.binary, env, tcp, port)
    await wait_up(port)
    up = time.monotonic() - restarted
    print(f"restarted ({'SIGTERM' if args.graceful else 'SIGKILL'}) with {before_restart} messages acked; up again in {up:.2f} s")

    # Wait until every stream has reconnected and holds everything acked so far.
    caught_up_at = None
    end = time.monotonic() + args.after
    while time.monotonic() < end:
        target = set(acked[:before_restart])
        if caught_up_at is None and all(s.connections >= 2 and target <= set(s.ids) for s in streams):
            caught_up_at = time.monotonic() - restarted
        await asyncio.sleep(0.1)
    stop.set()
    await send
    await asyncio.sleep(1.0)
    for t in tasks:
        t.cancel()
    proc.terminate()
    proc.wait()

    # Messages acked in the last second may still be in flight: judge up to then.
    expected = acked[:-max(1, int(args.rate))]
    lost = dup = disorder = 0
    for s in streams:
        got = [i for i in s.ids if i <= (expected[-1] if expected else 0)]
        seen = set(got)
        lost += sum(1 for i in expected if i not in seen)
        dup += len(got) - len(seen)
        disorder += sum(1 for a, b in zip(got, got[1:]) if b <= a)
    reconnected = sum(1 for s in streams if s.connections >= 2)
    print(f"streams {len(streams)}, reconnected {reconnected}, messages acked {len(acked)}, judged {len(expected)}")
    print(f"lost {lost}, duplicates {dup}, out of order {disorder}")
    print(f"all streams caught up {caught_up_at:.2f} s after the restart" if caught_up_at else "NOT all caught up")
    sys.exit(0 if lost == 0 and dup == 0 and disorder == 0 and caught_up_at else 1)


if __name__ == "__main__":
    asyncio.run(main())
