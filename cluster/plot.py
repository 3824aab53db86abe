"""``spotrain status --plot FILE.png``: loss (and val loss) against global step, all attempts.

Each attempt gets its own colour so a recomputed stretch after a restore is visible; preemptions
and failures are red dashed lines, restores green dotted lines.
"""

from __future__ import annotations

import os

from cluster.status import StatusReport


def write_plot(report: StatusReport, path: str) -> str:
    """Write the PNG and return its absolute path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=100)
    try:
        by_attempt: dict[int | None, list] = {}
        for p in report.history:
            by_attempt.setdefault(p.attempt, []).append(p)
        for attempt, pts in sorted(by_attempt.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            label = f"attempt {attempt}" if attempt is not None else "run"
            loss = [(p.global_step, p.values["loss"]) for p in pts if "loss" in p.values]
            if loss:
                xs, ys = zip(*loss, strict=True)
                ax.plot(xs, ys, marker=".", label=f"loss ({label})")
            val = [(p.global_step, p.values["val_loss"]) for p in pts if "val_loss" in p.values]
            if val:
                xs, ys = zip(*val, strict=True)
                ax.plot(xs, ys, marker="o", linestyle="--", label=f"val loss ({label})")
        seen: set[str] = set()
        for m in report.markers:
            if m.global_step is None:
                continue
            style = {"restore": ("tab:green", ":")}.get(m.kind, ("tab:red", "--"))
            first = m.kind not in seen
            seen.add(m.kind)
            ax.axvline(
                m.global_step,
                color=style[0],
                linestyle=style[1],
                alpha=0.8,
                label=m.kind if first else None,
            )
        if not report.history:
            ax.text(
                0.5,
                0.5,
                "no metrics recorded yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_xlabel("global step")
        ax.set_ylabel("loss")
        title = f"{report.name or report.run_url}: {report.state}"
        title += f" (attempts {report.attempts}, preemptions {report.preemptions}, lost steps {report.lost_steps})"
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        out = os.path.abspath(path)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        fig.savefig(out)
        return out
    finally:
        plt.close(fig)
