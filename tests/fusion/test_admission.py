"""The accept side of the open-files budget, in a child process whose descriptors are
all used up: the spare descriptor lets one connection in to be refused cleanly; without
it, accepting pauses instead of failing again at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import errno, os, resource, socket, sys
    from fustor.fusion.admission import Admission, guard
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    adm = Admission()
    lsock = guard(socket.create_server(("127.0.0.1", 0)), adm)
    print(lsock.getsockname()[1], flush=True)
    sys.stdin.readline()  # the parent has connected its clients
    held = []
    while True:  # use up every descriptor
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    out = []
    for _ in range(3):
        try:
            conn, addr = lsock.accept()
            out.append("refused" if adm.take_refused(addr) else "served")
        except BlockingIOError:
            out.append("paused")
        except OSError as exc:
            out.append(errno.errorcode[exc.errno])
    print(" ".join(out), flush=True)
""")


def test_out_of_descriptors_one_connection_is_refused_then_accepting_pauses():
    with subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as p:
        clients = []
        try:
            port = int(p.stdout.readline())
            clients = [socket.create_connection(("127.0.0.1", port), timeout=10)
                       for _ in range(3)]
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().split() == ["refused", "EMFILE", "paused"]
            assert p.wait(timeout=30) == 0
        finally:
            for c in clients:
                c.close()
            if p.poll() is None:
                p.kill()
