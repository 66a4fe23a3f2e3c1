#!/usr/bin/env python3
"""Slow-client attack on the HTTP front, and what a normal user sees meanwhile.

Opens N connections that each declare a 60 KB POST body (or, with --heads,
a request head) and then send one byte every 0.5 s; while they drip, a
normal client asks GET /api/health and posts a chat message every 100 ms,
each on a new connection, and the time to the answer is recorded.

    bench/slow_clients.py --http 127.0.0.1:3001 --slow 2000 --duration 10

Prints p50/p99/max per request kind and exits non-zero if any normal
request went unanswered (5 s) or failed.
"""
import argparse
import json
import socket
import statistics
import sys
import threading
import time


def request(addr, method, path, body=None, timeout=5.0):
    """One request on a new connection; returns (status, seconds, body)."""
    started = time.perf_counter()
    s = socket.create_connection(addr, timeout=timeout)
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    s.close()
    elapsed = time.perf_counter() - started
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, elapsed, answer.split(b"\r\n\r\n", 1)[-1]


def drip(addr, count, heads, stop, opened):
    conns = []
    for _ in range(count):
        try:
            s = socket.create_connection(addr, timeout=5)
            if heads:
                s.sendall(b"GET /api/health HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            else:
                s.sendall(b"POST /api/connect HTTP/1.1\r\nHost: bench\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{")
            s.setblocking(False)
            conns.append(s)
        except OSError:
            break
    opened.append(len(conns))
    while not stop.is_set():
        for s in conns:
            try:
                s.send(b"a" if heads else b" ")
            except OSError:
                pass
        stop.wait(0.5)
    for s in conns:
        s.close()


def summary(name, samples):
    if not samples:
        return f"{name}: no samples"
    ms = sorted(x * 1000 for x in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: n={len(ms)} p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", default="127.0.0.1:3001")
    ap.add_argument("--slow", type=int, default=20, help="slow connections")
    ap.add_argument("--heads", action="store_true", help="drip request heads instead of bodies")
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    host, port = args.http.rsplit(":", 1)
    addr = (host, int(port))

    nick = f"bench{int(time.time() * 1000) % 1000000}"
    status, _, body = request(addr, "POST", "/api/connect", {"nickname": nick})
    assert status == 200, body
    session = json.loads(body)["data"]["sessionId"]
    room = f"slow{int(time.time()) % 100000}"
    request(addr, "POST", "/api/command", {"sessionId": session, "command": f"/create {room}"})

    stop, opened = threading.Event(), []
    dripper = threading.Thread(target=drip, args=(addr, args.slow, args.heads, stop, opened))
    dripper.start()
    while not opened:
        time.sleep(0.05)
    print(f"{opened[0]} slow connections open ({'heads' if args.heads else 'bodies'})")

    health, post, failures = [], [], 0
    end = time.time() + args.duration
    n = 0
    while time.time() < end:
        for kind, samples, call in (
            ("health", health, lambda: request(addr, "GET", "/api/health")),
            ("post", post, lambda: request(addr, "POST", "/api/message",
                                           {"sessionId": session, "content": f"m{n}"})),
        ):
            try:
                status, elapsed, _ = call()
                if status == 200:
                    samples.append(elapsed)
                else:
                    failures += 1
                    print(f"{kind}: status {status}", file=sys.stderr)
            except OSError as e:
                failures += 1
                print(f"{kind}: {e}", file=sys.stderr)
        n += 1
        time.sleep(0.1)
    stop.set()
    dripper.join()
    print(summary("GET /api/health", health))
    print(summary("POST /api/message", post))
    print(f"failures: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
