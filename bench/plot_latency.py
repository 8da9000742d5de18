"""Plot median whole-findscu latency against N from query_latency.py JSON files (matplotlib).

One panel per query shape, one line per server (mwl per backend, wlmscpfs,
Orthanc), the pynetdicom zero-result floor as a dashed line; log-log axes.
Several JSON files may be given (e.g. one run with the peers at 1,000 and 10,000
and one with mwl alone at 100,000); later files add points, they never replace.

Example::

    python bench/plot_latency.py /tmp/q-sqlite.json /tmp/q-pg-100k.json \
        --out docs/img/query-latency.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

STYLES = {
    "mwl-sqlite": ("tab:blue", "o"),
    "mwl-postgresql": ("tab:green", "s"),
    "wlmscpfs": ("tab:red", "^"),
    "orthanc": ("tab:orange", "v"),
}
FLOOR = "pynetdicom-null"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_files", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("docs/img/query-latency.png"))
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib", file=sys.stderr)
        return 2

    # (shape, server) -> {n: [median_ms, ...]}; floor medians over every N and file.
    points: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    floors: list[float] = []
    descriptions: dict[str, str] = {}
    for path in args.json_files:
        data = json.loads(path.read_text())
        for record in data["results"]:
            for shape in record["shapes"]:
                # "broad (~500): <range chosen for this N>" -> "broad (~500)"
                descriptions.setdefault(shape["name"], shape["description"].split(":")[0])
            for row in record["rows"]:
                if "median_ms" not in row or (row["n"] or 0) <= 0:  # N = 0: no place on a log axis
                    continue
                if row["server"] == FLOOR:
                    floors.append(row["median_ms"])
                else:
                    points[(row["shape"], row["server"])][row["n"]].append(row["median_ms"])
    shapes = list(descriptions)
    if not shapes:
        print("no results in the JSON files", file=sys.stderr)
        return 1
    cols = 3
    rows = (len(shapes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    floor = statistics.median(floors) if floors else None
    for ax, shape in zip(axes.flat, shapes, strict=False):
        for server, (color, marker) in STYLES.items():
            series = points.get((shape, server))
            if not series:
                continue
            ns = sorted(series)
            ax.plot(
                ns,
                [statistics.median(series[n]) for n in ns],
                marker=marker,
                color=color,
                label=server,
            )
        if floor is not None:
            ax.axhline(
                floor, color="grey", linestyle="--", label=f"pynetdicom floor ({floor:.0f} ms)"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(descriptions[shape], fontsize=9)
        ax.set_xlabel("stored worklist items (N)")
        ax.set_ylabel("median findscu time (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shapes) :]:
        ax.set_visible(False)
    fig.suptitle("Worklist C-FIND, whole findscu -W process (TCP_NODELAY=1), median")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
