"""The bar chart a benchmark saves beside its JSON file (needs matplotlib, the bench extra)."""

from __future__ import annotations

import math
from pathlib import Path

# row keys that say which case a result is (a chart's groups), and the rates it can show
# (the write benchmark's rows say layout and writer for dataset and reader; the cloud
# benchmark's latency for cache)
CASE_KEYS = ("dataset", "layout", "kind", "workload", "cache", "latency")
RATES = {"gb_per_s": "GB/s", "files_per_s": "files/s", "crops_per_s": "crops/s",
         "examples_per_s": "examples/s", "steps_per_s": "steps/s", "bytes_per_s": "bytes/s"}


def save_chart(path: Path, rows: list[dict], title: str) -> Path | None:
    """A bar chart of ``rows`` beside the JSON: per case (dataset, workload, cache ...) one
    bar per reader, on a log scale (readers differ by 100x); one panel per unit. Needs
    matplotlib (the bench extra); without it, says so and draws nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no chart: matplotlib is not installed; pip install -e '.[bench]')")
        return None
    panels: dict[str, list[tuple[str, str, float]]] = {}
    for r in rows:
        key = next((k for k in RATES if isinstance(r.get(k), (int, float)) and r[k] > 0), None)
        if key is None or r.get("error"):
            continue
        case = " ".join(str(r[k]) for k in CASE_KEYS if r.get(k) not in (None, ""))
        reader = str(r.get("reader", r.get("writer", "?")))
        panels.setdefault(key, []).append((case, reader, float(r[key])))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(10, 3.2 * len(panels) + 0.8))
    for ax, (key, items) in zip(axes[:, 0], panels.items()):
        cases = list(dict.fromkeys(c for c, _, _ in items))
        readers = list(dict.fromkeys(r for _, r, _ in items))
        width = 0.8 / len(readers)
        for i, reader in enumerate(readers):
            got = {c: v for c, r, v in items if r == reader}
            xs = [k + (i - (len(readers) - 1) / 2) * width for k, c in enumerate(cases) if c in got]
            values = [got[c] for c in cases if c in got]
            bars = ax.bar(xs, values, width, label=reader)
            ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values],
                         fontsize=6, rotation=90, padding=2)
        ax.set_yscale("log")
        low, high = min(v for *_, v in items), max(v for *_, v in items)
        ax.set_ylim(10 ** math.floor(math.log10(low)), 10 ** (math.log10(high) + 0.6))
        ax.set_ylabel(RATES[key])
        ax.set_xticks(range(len(cases)), cases, fontsize=8, rotation=15 if len(cases) > 4 else 0)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=min(4, len(readers)), loc="upper right")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"chart: {path}")
    return path
