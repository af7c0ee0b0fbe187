"""Peak memory of a process tree, sampled from Linux ``/proc`` (psutil is not installed here).

What: :class:`TreeMemory` samples, in a background thread, the sum of RSS (``VmRSS`` of
``/proc/<pid>/status``) and of PSS (``Pss`` of ``/proc/<pid>/smaps_rollup``) over a process and
all its descendants, and keeps the peaks, the largest number of processes seen and every pid
seen; :func:`any_alive` tells whether any of those pids still runs (after the measured child
exits, Ray's processes may outlive it for a while).

Why a module of its own: ``benchmarks/simulation.py`` measures each setting as a child process
whose memory is mostly in its descendants (Ray's GCS, raylet and worker processes), so a
setting's memory is the whole tree's. The process listing is :func:`fedssl.processes.proc_table`
(the same ``/proc`` scan ``fedssl`` uses to find a process's descendants), not a second
scanner. :func:`process_tree` walks that table itself rather than calling
:func:`fedssl.processes.descendants`, because ``descendants`` leaves out zombies and the root,
and this sampler has always counted both in its process count (a zombie's RSS and PSS read
as 0, so the memory sums are the same either way).
"""

from __future__ import annotations

import threading

from fedssl.processes import proc_table


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, zombies included (from ``/proc``)."""
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _state, _start) in proc_table().items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def any_alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` exists and is not a zombie."""
    table = proc_table()
    return any(p in table and table[p][1] != "Z" for p in pids)


def process_label(pid: int) -> str:
    """A short name for what process ``pid`` is, to group a tree's memory by: Ray's own
    processes by their executable (``gcs_server``, ``raylet``, ...), Ray workers by the
    title Ray gives them (``ray::ClientAppActor``, ``ray::IDLE``), Python by its script or
    module, else the command name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    head = argv[0].split("/")[-1]
    if head.startswith("ray::"):
        return argv[0].split()[0]
    if head.startswith("python") and len(argv) > 1:
        rest = argv[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-m":  # -u, -B, -X ...
            rest = rest[1:]
        if rest[:1] == ["-m"]:
            rest = rest[1:]
        return f"python {rest[0].split('/')[-1]}" if rest else "python"
    return head


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


#: ticks between two scans of ``/proc`` for the tree's processes (~2 ms per scan)
TREE_EVERY = 4
#: PSS is sampled when the tree's RSS has grown by this factor since the last PSS sample, or
#: after ``PSS_EVERY`` ticks: reading ``smaps_rollup`` walks every page table (~38 ms for
#: fedssl's 10 processes at 10 clients), and the sampler runs on the cores it measures, so
#: sampling PSS every second cost ~2 % of a 2-core machine, more for a tree of more processes
PSS_RSS_GROWTH = 1.01
PSS_EVERY = 20


class TreeMemory:
    """Samples the RSS and PSS sums of a process tree in a background thread: RSS every
    ``interval`` seconds, the process list every :data:`TREE_EVERY` samples, PSS when RSS
    grew (:data:`PSS_RSS_GROWTH`) or every :data:`PSS_EVERY` samples."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self.pids: set[int] = set()
        #: PSS (KiB) per kind of process (:func:`process_label`) at the tree's PSS peak
        self.peak_pss_by_label: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick, pids = 0, []
        pss_rss, pss_tick = 0, 0  # the tree's RSS and the tick at the last PSS sample
        while not self._stop.is_set():
            if tick % TREE_EVERY == 0:
                pids = process_tree(self.root)
                self.pids.update(pids)
                self.max_procs = max(self.max_procs, len(pids))
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
            self.peak_rss = max(self.peak_rss, rss)
            if tick == 0 or rss > pss_rss * PSS_RSS_GROWTH or tick - pss_tick >= PSS_EVERY:
                self._sample_pss(pids)
                pss_rss, pss_tick = rss, tick
            tick += 1
            self._stop.wait(self.interval)

    def _sample_pss(self, pids: list[int]) -> None:
        each = {p: _kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids}
        pss = sum(each.values())
        if pss > self.peak_pss:
            self.peak_pss = pss
            by_label: dict[str, int] = {}
            for p, kib in each.items():
                label = process_label(p)
                by_label[label] = by_label.get(label, 0) + kib
            self.peak_pss_by_label = by_label

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
