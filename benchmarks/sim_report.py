"""The report of ``benchmarks/simulation.py``: ratios between settings, the table, the plot.

What: :func:`add_ratios` adds to each measured row its ratios to the sequential floor, to the
ideal (floor compute / cores and its own compute / cores), to the parallel floor and to the
vanilla Flower app at the same N; :func:`table` formats the rows as the Markdown table the
benchmark prints and stores; :func:`plot` draws seconds per round and peak PSS per setting.

Why a module of its own: it only reads the rows that ``simulation.py``'s ``measure`` returns
(it measures nothing), so the way results are compared and shown can be read and changed apart
from the measurement. Imported by ``simulation.py``, which puts ``benchmarks/`` on
``sys.path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim_workload import KINDS, per_round


def add_ratios(rows: list[dict[str, Any]], cores: int) -> None:
    floors = {r["clients"]: r for r in rows if r["kind"] == "floor" and "error" not in r}
    flowers = {r["clients"]: r for r in rows if r["kind"] == "flower" and "error" not in r}
    pfls = {r["clients"]: r for r in rows if r["kind"] == "pfl-2proc" and "error" not in r}
    plain = {r["clients"]: r for r in rows if r["kind"] == "fedssl" and "error" not in r}
    parallel = {r["clients"]: r for r in rows
                if r["kind"] == "floor-parallel" and "error" not in r}
    for r in rows:
        r["cores"] = cores
        if "error" not in r and r["kind"].startswith("fedssl+") and r["clients"] in plain:
            # what DP-SGD or secure aggregation adds to the same run
            r["x_fedssl"] = r["seconds_per_round"] / plain[r["clients"]]["seconds_per_round"]
        if "error" not in r and r["clients"] in pfls:
            # the bar: fedssl's steady round against pfl's two-worker round
            r["x_pfl_2proc"] = r["seconds_per_round"] / pfls[r["clients"]]["seconds_per_round"]
        if "error" not in r and r["clients"] in parallel:
            # against the same training run side by side in plain processes on this machine
            r["x_floor_parallel"] = (r["seconds_per_round"]
                                     / parallel[r["clients"]]["seconds_per_round"])
        f = floors.get(r["clients"])
        if "error" in r or f is None:
            continue
        r["x_floor"] = r["seconds_per_round"] / f["seconds_per_round"]
        r["ideal_seconds"] = f["client_compute_per_round"] / cores
        r["x_ideal"] = r["seconds_per_round"] / r["ideal_seconds"]
        if r.get("client_compute_per_round"):
            # against the compute this very run did (the machine's speed drifts between
            # settings by up to 1.6x here): wall / (its clients' summed train seconds / cores)
            r["x_ideal_in_run"] = r["seconds_per_round"] / (r["client_compute_per_round"] / cores)
        fl = flowers.get(r["clients"])
        if fl is not None:
            r["speedup_vs_flower"] = fl["seconds_per_round"] / r["seconds_per_round"]
            if r.get("three_rounds_seconds") and fl.get("three_rounds_seconds"):
                r["three_rounds_vs_flower"] = (fl["three_rounds_seconds"]
                                               / r["three_rounds_seconds"])
            r["wall_vs_flower"] = fl["process_seconds"] / r["process_seconds"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N | per round | steps | method | startup s | 1st round s | s/round (median) | "
            "rounds 1-3 s | process wall s | rounds/s | updates/s | x floor | "
            "x ideal (floor compute/cores) | x ideal (own compute/cores) | x parallel floor | "
            "vs Flower (steady / rounds 1-3 / wall) | x pfl 2 proc | x fedssl | "
            "peak RSS MiB | peak PSS MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['clients']} | {r['clients_per_round']} | "
                         f"{r['local_steps']} | {r['kind']} | failed: "
                         f"{r['error'].splitlines()[0][:60]} |")
            continue
        lines.append(
            f"| {r['clients']} | {r['clients_per_round']} | {r['local_steps']} | {r['kind']} | "
            f"{r['startup_seconds']:.1f} | {r['first_round_seconds']:.2f} | "
            f"{r['seconds_per_round']:.2f} | {_fmt(r.get('three_rounds_seconds'), '{:.2f}')} | "
            f"{r['process_seconds']:.1f} | {r['rounds_per_second']:.3f} | "
            f"{r['client_updates_per_second']:.1f} | {r.get('x_floor', float('nan')):.2f} | "
            f"{r.get('x_ideal', float('nan')):.2f} | "
            f"{_fmt(r.get('x_ideal_in_run'), '{:.2f}')} | "
            f"{_fmt(r.get('x_floor_parallel'), '{:.2f}')} | "
            f"{_fmt(r.get('speedup_vs_flower'), '{:.2f}x')} / "
            f"{_fmt(r.get('three_rounds_vs_flower'), '{:.2f}x')} / "
            f"{_fmt(r.get('wall_vs_flower'), '{:.2f}x')} | "
            f"{_fmt(r.get('x_pfl_2proc'), '{:.2f}')} | {_fmt(r.get('x_fedssl'), '{:.2f}')} | "
            f"{r['peak_rss_mib']:.0f} | "
            f"{r['peak_pss_mib']:.0f} |")
    return "\n".join(lines)


#: a simulated client's round, in order (``fedssl.client.app.PhaseClock``), and the CPU
#: seconds of its training phase (below "train" when the process waited for a core)
PHASES = ("setup", "plan", "model", "train", "train cpu", "ledger", "reply")


def phase_table(rows: list[dict[str, Any]]) -> str:
    """Where one fedssl client's round goes, per phase, next to the whole round's share per
    client (``seconds per round x cores / clients per round``): what is not in any phase is
    the simulator's (messages, actors, the server), not the client's."""
    measured = [r for r in rows if r.get("client_phase_per_client")]
    if not measured:
        return ""
    head = ("| N | method | " + " | ".join(PHASES)
            + " | client total | round x cores / clients |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in measured:
        p = r["client_phase_per_client"]
        share = r["seconds_per_round"] * r.get("cores", 1) / r["clients_per_round"]
        lines.append(f"| {r['clients']} | {r['kind']} | "
                     + " | ".join(f"{p.get(k, 0.0):.3f}" for k in PHASES)
                     + f" | {sum(v for k, v in p.items() if k != 'train cpu'):.3f} | "
                     f"{share:.3f} |")
    return "\n".join(lines)


def memory_table(rows: list[dict[str, Any]], top: int = 6) -> str:
    """Where each setting's memory was at its peak: PSS (MiB) of its ``top`` largest kinds
    of process (Ray's GCS and raylet, the workers, the driver, pfl's ranks, ...) and of the
    rest, one line per setting."""
    lines = ["| N | method | peak PSS MiB | by process (MiB) |", "|---|---|---|---|"]
    for r in rows:
        by = r.get("peak_pss_mib_by_process")
        if not by or "error" in r:
            continue
        items = list(by.items())
        shown = ", ".join(f"{k} {v:.0f}" for k, v in items[:top])
        rest = sum(v for _, v in items[top:])
        lines.append(f"| {r['clients']} | {r['kind']} | {r['peak_pss_mib']:.0f} | {shown}"
                     + (f", {len(items) - top} others {rest:.0f}" if rest else "") + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(KINDS)
    for i, kind in enumerate(KINDS):
        ys = [next((r.get("seconds_per_round", 0.0) for r in rows
                    if r["kind"] == kind and r["clients"] == n and "error" not in r), 0.0)
              for n in ns]
        ms = [next((r["peak_pss_mib"] / 1024 for r in rows
                    if r["kind"] == kind and r["clients"] == n), 0.0) for n in ns]
        xs = [j + i * width for j in range(len(ns))]
        axes[0].bar(xs, ys, width, label=kind)
        axes[1].bar(xs, ms, width, label=kind)
    for ax, title in zip(axes, ("seconds per round (median of steady rounds)",
                                "peak memory of the process tree (PSS, GiB)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))])
        ax.set_xticklabels([f"N={n}\n({per_round(n)}/round)" for n in ns])
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

