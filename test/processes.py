"""Subprocesses in tests: stopped for certain, never left behind (see conftest's no_process_left_behind)."""
import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen, grace: float = 15.0, sig: int = signal.SIGTERM):
    """Ask ``proc`` to stop (``sig``), kill it after ``grace`` seconds, reap it; returns its stdout
    when it was piped (a node can hang in DDS teardown and ignore SIGTERM: that must not outlive the test)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    return out


def descendants(pid: int | None = None) -> list[tuple[int, str]]:
    """Live (not zombie) processes below ``pid`` (default: this process), as (pid, command line)."""
    root = os.getpid() if pid is None else pid
    parent, command = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parent[int(entry)] = int(ppid)
    found, frontier = [], [root]
    while frontier:
        below = [p for p, pp in parent.items() if pp in frontier]
        found += below
        frontier = below
    return [(p, command.get(p, "")) for p in found]
