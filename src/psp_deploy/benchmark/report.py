"""Benchmark results → a markdown report and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _config(row: Row) -> str:
    return f"{row['backend']} {row['precision']} ({row['modconv']})"


def conv_rate(results: dict[str, Any], row: Row) -> float | None:
    """The single-conv rate of the row's own backend at its own precision: an INT8 or BF16 figure held
    against the FP32 rate would read as several hundred percent of the machine."""
    backend = "torch" if row["backend"] == "torch-official" else row["backend"]
    return results.get("conv_gflops_per_s", {}).get(row["precision"], {}).get(backend)


def _find(rows: list[Row], **where: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def latency_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| configuration | batch | stage | p50 s | p90 s | mean s | images/s | GFLOP/s "
        "| of the conv rate, same backend and precision |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["results"]:
        lat, gf, limit = r["latency_s"], r["gflops_per_s"], conv_rate(results, r)
        share = f"{gf / limit:.0%}" if gf and limit else ""
        lines.append(
            f"| {_config(r)} | {r['batch']} | {r['stage']} | {lat['p50']:.3f} | {lat['p90']:.3f} | "
            f"{lat['mean']:.3f} | {r['images_per_s']:.3f} | {gf or 0:.1f} | {share} |"
        )
    return lines


def speedup_section(results: dict[str, Any]) -> list[str]:
    """End to end against the official path; nothing when there is no official row to hold against."""
    rows = results["results"]
    table = []
    for r in rows:
        if r["stage"] != "e2e" or r["backend"] == "torch-official":
            continue
        base = _find(rows, backend="torch-official", stage="e2e", batch=r["batch"])
        if base:
            ours, theirs = 1 / r["images_per_s"], 1 / base["images_per_s"]
            table.append(f"| {_config(r)} | {r['batch']} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.1f}× |")
    if not table:
        return []
    header = ["| configuration | batch | e2e s / image | official s / image | speed-up |", "|---|---:|---:|---:|---:|"]
    return ["## End to end against the official path", "", *header, *table, ""]


def warnings_section(results: dict[str, Any]) -> list[str]:
    if not results.get("warnings"):
        return []
    return ["## Warnings", "", *(f"- {w}" for w in results["warnings"]), ""]


def limits_section(results: dict[str, Any]) -> list[str]:
    """The single-conv rates (none when measured with --no-limits)."""
    rates = results.get("conv_gflops_per_s", {})
    if not rates:
        return []
    lines = ["## The machine's limit: one 512→512 3×3 convolution at 64²", ""]
    lines += ["| precision | backend | GFLOP/s (or GOP/s) |", "|---|---|---:|"]
    for precision, by_backend in rates.items():
        lines += [f"| {precision} | {backend} | {rate:.0f} |" for backend, rate in by_backend.items()]
    return [*lines, ""]


def profile_section(results: dict[str, Any]) -> list[str]:
    """Where the time goes: the backend profiler's per-op seconds for each graph (one batch)."""
    from .op_profile import profile_table

    if not results.get("profiles"):
        return []
    lines = ["## Where the time goes (per-op profile, one batch)", ""]
    for config, graphs in results["profiles"].items():
        for graph, seconds in graphs.items():
            lines += [f"### {config}: {graph}", "", *profile_table(seconds), ""]
    return lines


def write_plots(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["results"]
    configs = list(dict.fromkeys(_config(r) for r in rows))
    stages = [s for s in ("align", "encode", "synthesize") if any(r["stage"] == s for r in rows)]
    paths = []

    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        values = [
            (_find(rows, stage=stage, batch=1, **_split(c)) or {}).get("latency_s", {}).get("p50", 0) for c in configs
        ]
        ax.bar([x + i * width for x in range(len(configs))], values, width, label=stage)
    ax.set_xticks([x + width * (len(stages) - 1) / 2 for x in range(len(configs))], configs, rotation=30, ha="right")
    ax.set_ylabel("seconds per batch of 1 (p50)")
    ax.set_title("Latency per stage, batch 1")
    ax.legend()
    paths.append(_save(fig, out / f"{stem}-latency.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    for config in configs:
        points = sorted((r["batch"], r["images_per_s"]) for r in rows if r["stage"] == "e2e" and _config(r) == config)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=config)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s (end to end)")
    ax.set_title("Throughput vs batch")
    _legend(ax)
    paths.append(_save(fig, out / f"{stem}-throughput.png"))

    fig, ax = plt.subplots(figsize=(10, 5))
    e2e = [r for r in rows if r["stage"] == "synthesize" and r["gflops_per_s"]]
    ax.bar(range(len(e2e)), [r["gflops_per_s"] for r in e2e])
    ax.set_xticks(range(len(e2e)), [f"{_config(r)} b{r['batch']}" for r in e2e], rotation=35, ha="right", fontsize=8)
    for i, (precision, rates) in enumerate(results.get("conv_gflops_per_s", {}).items()):
        ax.axhline(max(rates.values()), linestyle="--", label=f"single-conv limit, {precision}", color=f"C{i + 1}")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Synthesis: achieved rate against the machine's single-conv rate")
    _legend(ax)
    paths.append(_save(fig, out / f"{stem}-roofline.png"))
    return paths


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize=8)


def _split(config: str) -> dict[str, str]:
    backend, precision, modconv = config.replace("(", "").replace(")", "").split()
    return {"backend": backend, "precision": precision, "modconv": modconv}


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path, stem: str, command: str, notes: list[str] | None = None) -> Path:
    """``out/<stem>.md`` with the tables and plots; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out, stem)
    machine, settings = results["machine"], results["settings"]
    lines = [
        f"# psp-deploy benchmark: {machine['model']}",
        "",
        f"- CPU: {machine['model']}, {machine['logical_cores']} logical cores, "
        f"ISA flags: {', '.join(machine['flags'])}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        f"- settings: threads {settings.get('threads') or 'all'}, warmup {settings['warmup']}, runs {settings['runs']}",
        f"- model: {results['bundle']['config']['task']} {results['bundle']['config']['output_size']}² (synthetic "
        f"weights, official shapes); GFLOP per image: "
        + ", ".join(f"{g} {f:.1f}" for g, f in results["gflop_per_image"].items()),
        f"- reproduce: `{command}`",
        "",
        *warnings_section(results),
        *limits_section(results),
        *speedup_section(results),
        "## Every measurement",
        "",
        *latency_table(results),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
        *profile_section(results),
        *(notes or []),
    ]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
