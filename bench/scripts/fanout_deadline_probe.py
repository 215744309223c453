#!/usr/bin/env python3
# What the http sample still holds after a /fanout's deadline: the extra
# descriptors (backend sockets) and fibers of late calls, right when the
# answer arrives and 100 ms later, for two kinds of late calls: a backend that
# accepts and never answers (--backend), and simulated calls that sleep a
# minute (ms=60000). The deadline is 50 ms (--fanout-deadline-ms).
#
#   python3 bench/scripts/fanout_deadline_probe.py build/samples/http [rounds]
#
# Extra: compared with the server's own count before the first request (one
# /stats request's connection fiber is in both).
import json, os, socket, subprocess, sys, time
bin_ = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
silent = socket.socket(); silent.bind(("127.0.0.1", 0)); silent.listen(4096)  # accepts (backlog), never answers
bport = silent.getsockname()[1]
def start(args):
    p = subprocess.Popen([bin_, "--port", "0", "--workers", "2", "--fanout-deadline-ms", "50"] + args, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline(); port = int(line.rsplit(":", 1)[1]); return p, port
def get(port, path):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b: break
        data += b
    s.close(); return data.split(b"\r\n\r\n", 1)[1].decode()
def fds(pid): return len(os.listdir(f"/proc/{pid}/fd"))
def fibers(port): return json.loads(get(port, "/stats")).get("fibers_live", -1)
for name, args, path in [("silent backend", ["--backend", f"127.0.0.1:{bport}"], "/fanout?n=200&ms=0"),
                         ("simulated, ms=60000", [], "/fanout?n=200&ms=60000")]:
    p, port = start(args)
    get(port, "/"); time.sleep(0.2)
    base_fds, base_fib = fds(p.pid), fibers(port)
    res = []
    for r in range(rounds):
        t0 = time.monotonic(); body = get(port, path); t1 = time.monotonic()
        f0, fb0 = fds(p.pid) - base_fds, fibers(port) - base_fib
        time.sleep(0.1)
        f1, fb1 = fds(p.pid) - base_fds, fibers(port) - base_fib
        res.append((round((t1 - t0) * 1000), body.strip(), f0, fb0, f1, fb1))
        time.sleep(1.2)  # late calls bounded by a 1 s I/O timeout (older builds) end between rounds
    p.terminate(); p.wait(timeout=30)
    print(f"== {name}: {path}, deadline 50 ms")
    print("  answer ms | answer | extra fds at answer | extra fibers at answer | fds +100 ms | fibers +100 ms")
    for x in res: print("  %4d | %s | %d | %d | %d | %d" % x)
