#!/usr/bin/env python3
"""pmi2_launch.py: N ranks of one program on this machine, served the PMI2 wire protocol as `srun --mpi=pmi2`
serves it, for machines without Slurm (the lent GPU machines): the programs' own comm.c, through Slurm's client
library libpmi2.so.0 (carried there), gets its rank, world size and key-value store from here.

    pmi2_launch.py -n N [--rank-env NAME=VALUE]... -- PROGRAM ARGS...

Each rank gets one end of a socket pair as PMI_FD, with PMI_RANK, PMI_SIZE, PMI_JOBID, and SLURM_PROCID and
SLURM_LOCALID as srun sets them; --rank-env sets NAME to VALUE with "{rank}" replaced by the rank (e.g.
NCCL_HOSTID=rank{rank}: NCCL then takes the ranks for separate hosts, so that two ranks may share one GPU, joined
through its socket transport). The server answers the commands comm.c's calls send (PMI-1's init handshake, then
fullinit, job-getid, kvs-put, kvs-fence, kvs-get, finalize); a fence answers every rank once all have entered it.
A rank that exits non-zero ends the others (as srun --kill-on-bad-exit); the exit status is that rank's, or 0. Tested against srun in tests/slurm.bats.
"""
import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys


def parse_command(text):
    """'cmd=kvs-put;key=a;value=b;' -> {'cmd': 'kvs-put', 'key': 'a', 'value': 'b'} (';;' is a literal ';')."""
    pairs, field, i = {}, "", 0
    while i < len(text):
        ch = text[i]
        if ch == ";" and text[i + 1:i + 2] == ";":
            field, i = field + ";", i + 2
            continue
        if ch == ";":
            if field:
                key, _, value = field.partition("=")
                pairs[key] = value
            field = ""
        else:
            field += ch
        i += 1
    if field:
        key, _, value = field.partition("=")
        pairs[key] = value
    return pairs


def pmi2_message(cmd, **pairs):
    """A PMI2 command: its length in 6 characters, then cmd=...; and key=value; pairs (';' doubled in values)."""
    body = f"cmd={cmd};" + "".join(f"{k.replace('_', '-')}={str(v).replace(';', ';;')};" for k, v in pairs.items())
    data = body.encode()
    return f"{len(data):<6d}".encode() + data


class Rank:
    def __init__(self, rank, sock):
        self.rank, self.sock, self.buf, self.pmi1 = rank, sock, b"", True

    def messages(self):
        """Complete messages in the buffer: PMI-1 lines (the init handshake) until then, PMI2 frames after."""
        while True:
            if self.pmi1:
                nl = self.buf.find(b"\n")
                if nl < 0:
                    return
                line, self.buf = self.buf[:nl].decode(), self.buf[nl + 1:]
                yield "pmi1", dict(f.partition("=")[::2] for f in line.split())
            else:
                if len(self.buf) < 6:
                    return
                n = int(self.buf[:6].decode().strip())
                if len(self.buf) < 6 + n:
                    return
                body, self.buf = self.buf[6:6 + n].decode(), self.buf[6 + n:]
                yield "pmi2", parse_command(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, required=True, help="number of ranks")
    ap.add_argument("--rank-env", action="append", default=[], metavar="NAME=VALUE", help="per-rank setting ({rank} replaced)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if a.n < 1 or not command:
        ap.error("need -n N >= 1 and a program")
    jobid = f"pmi2launch-{os.getpid()}"
    sel, ranks, procs = selectors.DefaultSelector(), [], []
    for r in range(a.n):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PMI_FD=str(theirs.fileno()), PMI_RANK=str(r), PMI_SIZE=str(a.n), PMI_JOBID=jobid,
                   SLURM_PROCID=str(r), SLURM_LOCALID=str(r))
        for setting in a.rank_env:
            name, _, value = setting.partition("=")
            env[name] = value.replace("{rank}", str(r))
        procs.append(subprocess.Popen(command, env=env, pass_fds=(theirs.fileno(),)))
        theirs.close()
        ranks.append(Rank(r, ours))
        sel.register(ours, selectors.EVENT_READ, ranks[-1])
    kvs, pending, in_fence = {}, {}, set()  # pending: this fence epoch's puts, published when the fence completes

    def reply(rank, data):
        rank.sock.sendall(data)

    open_ranks, first_failure = a.n, None
    while open_ranks:
        for key, _ in sel.select(timeout=1.0):
            rank = key.data
            data = rank.sock.recv(65536)
            if not data:  # the rank closed its end (finalized or exited)
                sel.unregister(rank.sock)
                open_ranks -= 1
                continue
            rank.buf += data
            for kind, m in rank.messages():
                cmd = m.get("cmd")
                if kind == "pmi1":  # "cmd=init pmi_version=2 pmi_subversion=0"
                    reply(rank, b"cmd=response_to_init pmi_version=2 pmi_subversion=0 rc=0\n")
                    rank.pmi1 = False
                elif cmd == "fullinit":
                    reply(rank, pmi2_message("fullinit-response", rc=0, pmi_version=2, pmi_subversion=0, rank=rank.rank,
                                             size=a.n, appnum=0, debugged="FALSE", pmiverbose="FALSE"))
                elif cmd == "job-getid":
                    reply(rank, pmi2_message("job-getid-response", rc=0, jobid=jobid))
                elif cmd == "kvs-put":
                    pending[m["key"]] = m.get("value", "")
                    reply(rank, pmi2_message("kvs-put-response", rc=0))
                elif cmd == "kvs-fence":
                    in_fence.add(rank.rank)
                    if len(in_fence) == a.n:
                        kvs.update(pending)
                        pending.clear()
                        in_fence.clear()
                        for other in ranks:
                            reply(other, pmi2_message("kvs-fence-response", rc=0))
                elif cmd == "kvs-get":
                    if m.get("key") in kvs:
                        reply(rank, pmi2_message("kvs-get-response", rc=0, found="TRUE", value=kvs[m["key"]]))
                    else:
                        reply(rank, pmi2_message("kvs-get-response", rc=0, found="FALSE"))
                elif cmd == "finalize":
                    reply(rank, pmi2_message("finalize-response", rc=0))
                else:
                    reply(rank, pmi2_message(f"{cmd}-response", rc=1, errmsg=f"pmi2_launch.py does not serve {cmd}"))
        # a rank that failed ends the others (srun --kill-on-bad-exit)
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed:
            first_failure = failed[0].returncode
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            break
    codes = []
    for p in procs:  # (a rank the SIGTERM does not end within 10 s -- one blocked outside its watched waits -- is killed)
        try:
            codes.append(p.wait(timeout=10 if first_failure is not None else None))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    bad = [c for c in codes if c != 0]
    if bad:
        print(f"pmi2_launch: ranks exited with {codes}", file=sys.stderr)
    return first_failure if first_failure is not None else bad[0] if bad else 0


if __name__ == "__main__":
    code = main()
    sys.exit(code if code >= 0 else 128 - code)
