#!/usr/bin/env python3
"""A tiny Kado JSON protocol client for the test scripts.

One JSON request per TCP connection: write it, half-close (FIN), read the one
JSON answer to EOF.

  kado.py HOST:PORT save SID JSON          -> prints the reply; exit 0 if status ok
  kado.py HOST:PORT restore SID            -> prints result JSON; exit 0 if status ok
  kado.py HOST:PORT check SID JSON         -> exit 0 if restore(SID) == JSON
  kado.py HOST:PORT saves PREFIX N         -> saves PREFIX-0..N-1 ({"i": k}); exit 0 if all ok
  kado.py HOST:PORT checks PREFIX N        -> exit 0 if every PREFIX-k reads back {"i": k}
  kado.py HOST:PORT writer PREFIX SECS ACKS -> for SECS seconds (or until the file ACKS.stop
                                               exists) save PREFIX-0, -1, … one after the other,
                                               appending each acknowledged k to the file ACKS;
                                               prints acks, failed tries, longest gap between acks
                                               (KADO_VERBOSE=1: every failure on stderr)
  kado.py HOST:PORT acked PREFIX ACKS      -> exit 0 if every k in ACKS reads back {"i": k}
  kado.py HOST:PORT fresh SID JSON         -> restore(SID) must answer JSON: an answer with other
                                              data is a stale read and fails at once (exit 1), never
                                              retried; errors and time-outs are retried within
                                              --retry-for, then exit 4 (3: could not even connect)
  kado.py HOST:PORT notack SID JSON        -> one save that must NOT be acknowledged: exit 0 when
                                              the node answers an error or never answers within
                                              --timeout, 1 when it acknowledges, 3 when no
                                              connection could be made (nothing was tested)

Options (before HOST:PORT): --retry-for SECONDS  keep retrying a failed
operation (connection refused, error reply) until it succeeds or time runs
out, then print how long it took on stderr; --timeout SECONDS per connection.
"""
import json
import socket
import sys
import time


class ConnectError(OSError):
    """The TCP connection itself failed: the request never reached a node."""


def call(addr, req, timeout):
    host, port = addr.rsplit(":", 1)
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        raise ConnectError("connect %s: %s" % (addr, e))
    with conn as s:
        s.settimeout(timeout)
        s.sendall(json.dumps(req, separators=(",", ":")).encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    if not raw:
        raise RuntimeError("empty reply (connection closed without an answer)")
    return json.loads(raw)


def now_ms():
    return int(time.time() * 1000)


def save(addr, sid, data, timeout):
    r = call(addr, {"save": {"sid": sid, "data": data, "_written": now_ms()}}, timeout)
    if r.get("status") != "ok":
        raise RuntimeError("save %s: %s" % (sid, json.dumps(r)))
    return r


def restore(addr, sid, timeout):
    r = call(addr, {"restore": {"sid": sid, "_written": now_ms()}}, timeout)
    if r.get("status") != "ok":
        raise RuntimeError("restore %s: %s" % (sid, json.dumps(r)))
    return r.get("result")


def strip(d):
    # The server may keep _written beside the data; compare the data only.
    if isinstance(d, dict):
        return {k: v for k, v in d.items() if k != "_written"}
    return d


def writer(addr, prefix, secs, ackfile, timeout):
    import os
    start = time.monotonic()
    last_ack = start
    gap, gap_end = 0.0, 0.0
    k, failed = 0, 0
    last_err, gap_err = "", ""
    with open(ackfile, "a") as acks:
        while time.monotonic() - start < secs and not os.path.exists(ackfile + ".stop"):
            try:
                save(addr, "%s-%d" % (prefix, k), {"i": k}, timeout)
            except (OSError, RuntimeError, ValueError) as e:
                failed += 1
                last_err = "%s (+%.2fs)" % (e, time.monotonic() - start)
                if os.environ.get("KADO_VERBOSE"):
                    print("writer +%.3fs (%.3fs since last ack): %s" % (time.monotonic() - start, time.monotonic() - last_ack, e), file=sys.stderr)
                time.sleep(0.02)
                k += 1  # an unacknowledged write may or may not have landed: never reuse its sid
                continue
            t = time.monotonic()
            if t - last_ack > gap:
                gap, gap_end = t - last_ack, t - start
                gap_err = last_err
            last_ack = t
            last_err = ""
            acks.write("%d\n" % k)
            acks.flush()
            k += 1
    # A stall that lasts until the end counts too.
    t = time.monotonic()
    if t - last_ack > gap:
        gap, gap_end = t - last_ack, t - start
        gap_err = last_err or "no answer yet when the writer stopped"
    n = sum(1 for _ in open(ackfile))
    print("writer %s: %d acknowledged, %d failed tries, longest gap between acks %.3fs (ending at +%.1fs)%s"
          % (addr, n, failed, gap, gap_end, "; last error in it: " + gap_err if gap_err else ""))
    return 0 if n > 0 else 1


def notack(addr, sid, data, timeout):
    start = time.monotonic()
    try:
        r = call(addr, {"save": {"sid": sid, "data": data, "_written": now_ms()}}, timeout)
    except ConnectError as e:
        print("notack: %s: nothing tested" % e)
        return 3
    except (OSError, RuntimeError, ValueError) as e:
        print("not acknowledged: %s (after %.2fs)" % (e or type(e).__name__, time.monotonic() - start))
        return 0
    if r.get("status") == "ok":
        print("ACKNOWLEDGED after %.2fs: %s" % (time.monotonic() - start, json.dumps(r)))
        return 1
    print("not acknowledged: refused with %s (after %.2fs)" % (json.dumps(r), time.monotonic() - start))
    return 0


def fresh(addr, sid, want, timeout, retry_for):
    start = time.monotonic()
    tries, errs = 0, []
    while True:
        tries += 1
        t = time.monotonic()
        try:
            got = strip(restore(addr, sid, timeout))
        except (OSError, RuntimeError, ValueError) as e:
            errs.append("%s (+%.2fs)" % (e or type(e).__name__, time.monotonic() - start))
            if time.monotonic() - start < retry_for:
                time.sleep(0.05)
                continue
            print("no answer: %d tries in %.2fs; errors: %s" % (tries, time.monotonic() - start, "; ".join(errs[-3:])))
            return 3 if all(isinstance(x, str) and x.startswith("connect ") for x in errs) else 4
        if got != want:
            print("STALE read: restore %s answered %s, want %s (try %d, +%.2fs)" % (sid, json.dumps(got), json.dumps(want), tries, time.monotonic() - start))
            return 1
        print("fresh: %s after %.2fs (try %d, that request took %.2fs)%s" % (json.dumps(got), time.monotonic() - start, tries, time.monotonic() - t,
              "; earlier errors: " + "; ".join(errs[-3:]) if errs else ""))
        return 0


def main(argv):
    retry_for, timeout = 0.0, 5.0
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if opt == "--retry-for":
            retry_for = float(argv.pop(0))
        elif opt == "--timeout":
            timeout = float(argv.pop(0))
        else:
            print("kado.py: unknown option %s" % opt, file=sys.stderr)
            return 2
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    addr, op, args = argv[0], argv[1], argv[2:]

    def once():
        if op == "save":
            return json.dumps(save(addr, args[0], json.loads(args[1]), timeout))
        if op == "restore":
            return json.dumps(restore(addr, args[0], timeout))
        if op == "check":
            got, want = strip(restore(addr, args[0], timeout)), json.loads(args[1])
            if got != want:
                raise AssertionError("restore %s: got %s, want %s" % (args[0], json.dumps(got), json.dumps(want)))
            return "ok"
        if op == "saves":
            for k in range(int(args[1])):
                save(addr, "%s-%d" % (args[0], k), {"i": k}, timeout)
            return "ok: %s sessions saved" % args[1]
        if op == "acked":
            with open(args[1]) as f:
                ks = [int(l) for l in f if l.strip()]
            def one(k):
                sid = "%s-%d" % (args[0], k)
                got = strip(restore(addr, sid, timeout))
                if got != {"i": k}:
                    raise AssertionError("acknowledged write lost: restore %s: got %s, want %s" % (sid, json.dumps(got), json.dumps({"i": k})))
            # Eight reads at a time: thousands of acks read back in seconds.
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(8) as pool:
                for _ in pool.map(one, ks):
                    pass
            return "ok: all %d acknowledged writes read back" % len(ks)
        if op == "checks":
            for k in range(int(args[1])):
                sid = "%s-%d" % (args[0], k)
                got = strip(restore(addr, sid, timeout))
                if got != {"i": k}:
                    raise AssertionError("restore %s: got %s, want %s" % (sid, json.dumps(got), json.dumps({"i": k})))
            return "ok: %s sessions read back" % args[1]
        raise ValueError("unknown operation %r" % op)

    if op == "writer":
        return writer(addr, args[0], float(args[1]), args[2], timeout)
    if op == "notack":
        return notack(addr, args[0], json.loads(args[1]), timeout)
    if op == "fresh":
        return fresh(addr, args[0], json.loads(args[1]), timeout, retry_for)

    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            out = once()
        except (OSError, RuntimeError, ValueError) as e:
            if isinstance(e, ValueError) and not isinstance(e, json.JSONDecodeError):
                print("kado.py: %s" % e, file=sys.stderr)
                return 2
            if time.monotonic() - start < retry_for:
                time.sleep(0.05)
                continue
            print("kado.py %s %s: %s (after %d tries, %.2fs)" % (addr, op, e, tries, time.monotonic() - start), file=sys.stderr)
            return 1
        except AssertionError as e:
            if time.monotonic() - start < retry_for:
                time.sleep(0.05)
                continue
            print("kado.py %s %s: %s" % (addr, op, e), file=sys.stderr)
            return 1
        if retry_for:
            print("kado.py %s %s: succeeded after %.2fs (%d tries)" % (addr, op, time.monotonic() - start, tries), file=sys.stderr)
        print(out)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
