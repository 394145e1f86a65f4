"""The PNG plots of a sweep directory, drawn from its results.csv rows (sweep.py, report.py).

Written with matplotlib's Agg backend through a temporary file + rename (sweep_results.atomic_write).
"""

import io
import math
import os

from .sweep_results import atomic_write, log


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """PNG through a temporary file + rename."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    atomic_write(path, buf.getvalue())


def _plain_log_axis(ax):
    """Log-scale y ticks written as plain numbers (1700, not 1.7x10^3); minor ticks are labelled
    only when the axis spans less than a decade (otherwise they crowd)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    formatter = FuncFormatter(lambda v, _: f"{v:.4g}")
    lo, hi = ax.get_ylim()
    if hi >= 10 * lo:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.yaxis.set_minor_formatter(formatter)
    ax.yaxis.set_major_formatter(formatter)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _granularity_colour(label):
    """One colour per granularity (the scheme is the line style), stable across plots."""
    palette = ["tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive"]
    order = ["tensor", "channel", "group32", "group64", "group128"]
    gran = label.split()[-1]
    return palette[order.index(gran)] if gran in order else palette[5 + sum(map(ord, gran)) % 3]


def _method(row):
    """The row's method (the CLI's `method` field; rows from before methods existed are RTN)."""
    return row.get("method") or "rtn"


METHOD_ORDER = ["rtn", "hqq", "awq", "gptq", "awq+gptq"]
METHOD_COLOURS = {"rtn": "tab:gray", "hqq": "tab:green", "awq": "tab:orange", "gptq": "tab:blue",
                  "awq+gptq": "tab:purple"}


def _method_key(m):
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _series_label(row):
    g = row["granularity"]
    return f"{row['scheme']} {('group' + str(row['group_size'])) if g == 'group' else g}"


def _curves(rows, range_name, metric):
    """{label: [(bits, value)]} for one range method."""
    curves = {}
    for r in rows:
        if r["variant"] == "fp32" or r.get("range") != range_name or not isinstance(r.get(metric), (int, float)) \
                or not isinstance(r.get("bits"), int):
            continue
        curves.setdefault(_series_label(r), []).append((r["bits"], r[metric]))
    return {k: sorted(v) for k, v in sorted(curves.items())}


def _pick_range(rows):
    ranges = [r.get("range") for r in rows if r["variant"] != "fp32"]
    return "minmax" if "minmax" in ranges else (ranges[0] if ranges else None)


def _title_suffix(run_info):
    model = os.path.basename(str(run_info.get("model", "")))
    return f"{model}, {run_info.get('text_tokens', '?')} tokens"


def _finish_ppl_figure(plt, fig, ax, path, xlabel, title, legend_size):
    """A perplexity plot's log y axis, labels, grid and legend; saves the PNG and closes it."""
    ax.set_yscale("log")
    _plain_log_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_all(out, rows, run_info, sensitivity=None):
    """Writes the PNGs into out; returns [(file, caption)] of those written."""
    plt = _pyplot()
    written = []
    fp32 = next((r for r in rows if r["variant"] == "fp32"), None)
    quant = [r for r in rows if r["variant"] != "fp32" and _finite(r.get("ppl"))]
    rng = _pick_range(quant)
    if not quant or rng is None:
        log("sweep: no quantized variants yet: no plots")
        return written
    styles = {"absmax": "-", "zeropoint": "--"}
    methods = sorted({_method(r) for r in quant}, key=_method_key)
    # the line charts (1, 3) follow one format across bit widths, so one method: RTN (else the first
    # method of the sweep); the methods have their own charts (2 and the per-bit-width bars)
    line_method = "rtn" if "rtn" in methods else methods[0]
    lines = [r for r in quant if _method(r) == line_method]
    rtn_note = (f" ({line_method} rows; the methods are in ppl_vs_effective_bits.png and methods_*bit.png)"
                if len(methods) > 1 else "")

    # 1. perplexity vs bits, one line per scheme x granularity, at one range method
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for label, pts in _curves(lines, rng, "ppl").items():
        ax.plot([b for b, _ in pts], [p for _, p in pts], styles.get(label.split()[0], "-"), marker="o",
                markersize=4, label=label, color=_granularity_colour(label))
    if fp32:
        ax.axhline(fp32["ppl"], color="black", linewidth=1, linestyle=":", label=f"fp32 ({fp32['ppl']:.4g})")
    _finish_ppl_figure(plt, fig, ax, os.path.join(out, "ppl_vs_bits.png"), "bits per weight code",
                       f"Perplexity vs bits, {rng} range — {_title_suffix(run_info)}", legend_size=8)
    written.append(("ppl_vs_bits.png", f"Perplexity vs bits ({rng} range), one line per scheme and granularity; "
                                       f"dotted: fp32{rtn_note}."))

    # 2. perplexity vs bits per weight, every variant of every format on one chart (the CLI's
    #    bits_per_weight: codes and every scale); colour per scheme / format family, marker per range
    #    method -- or, when the sweep has several methods, marker per method (the range in the label)
    pts = [r for r in quant if _finite(r.get("effective_bits_per_weight"))]
    if pts:
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        ranges = sorted({r["range"] for r in pts}, key=lambda x: (x != "minmax", x))
        schemes = sorted({r["scheme"] for r in pts})
        palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                   "tab:olive", "tab:cyan", "tab:red", "navy", "gold", "teal", "magenta", "sienna", "lime"]
        colours = {scheme: palette[i % len(palette)] for i, scheme in enumerate(schemes)}
        by_method = len(methods) > 1
        kinds = methods if by_method else ranges
        for i, kind in enumerate(kinds):
            for scheme in schemes:
                for rg in (ranges if by_method else [kind]):
                    sel = [r for r in pts if r["range"] == rg and r["scheme"] == scheme
                           and (not by_method or _method(r) == kind)]
                    if not sel:
                        continue
                    label = ", ".join(x for x in (scheme, rg if (rg and (not by_method or len(ranges) > 1)) else "",
                                                  kind if by_method else "") if x)
                    ax.scatter([r["effective_bits_per_weight"] for r in sel], [r["ppl"] for r in sel],
                               marker=markers[i % len(markers)], color=colours[scheme], alpha=0.75, s=22,
                               label=label)
        if fp32:
            ax.axhline(fp32["ppl"], color="black", linewidth=1, linestyle=":", label="fp32")
        _finish_ppl_figure(plt, fig, ax, os.path.join(out, "ppl_vs_effective_bits.png"),
                           "bits per weight (codes + scales + zero points)",
                           f"Perplexity vs bits per weight, every format — {_title_suffix(run_info)}", legend_size=7)
        written.append(("ppl_vs_effective_bits.png", "Perplexity vs bits per weight (all stored bits of codes and "
                                                     "scales over the weights), every variant of every format on one "
                                                     "chart (colour: scheme or format family, marker: "
                                                     + ("quantization method)." if by_method else "range method).")))
    else:
        log("sweep: no effective bits per weight known: skipping ppl_vs_effective_bits.png")

    # 3. KL and top-1 agreement vs bits, when the CLI reports them
    have_kl = any(isinstance(r.get("kl_mean"), (int, float)) for r in quant)
    have_top1 = any(isinstance(r.get("top1_agreement"), (int, float)) for r in quant)
    if have_kl or have_top1:
        panels = [(m, t) for m, t, ok in (("kl_mean", "mean KL(fp32 || variant), nats/token", have_kl),
                                          ("top1_agreement", "top-1 agreement with fp32", have_top1)) if ok]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), dpi=100, squeeze=False)
        for ax, (metric, title) in zip(axes[0], panels):
            for label, cpts in _curves(lines, rng, metric).items():
                xs = [b for b, v in cpts if metric != "kl_mean" or v > 0]
                ys = [v for _, v in cpts if metric != "kl_mean" or v > 0]
                ax.plot(xs, ys, styles.get(label.split()[0], "-"), marker="o", markersize=4, label=label,
                        color=_granularity_colour(label))
            if metric == "kl_mean":
                ax.set_yscale("log")
            ax.set_xlabel("bits per weight code")
            ax.set_title(f"{title} ({rng})", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, os.path.join(out, "agreement_vs_bits.png"))
        plt.close(fig)
        written.append(("agreement_vs_bits.png", "Distribution damage vs bits: mean KL divergence from fp32 and "
                                                 "the share of positions with the same top-1 token."))
    else:
        log("sweep: the CLI reports no kl_mean/top1_agreement: skipping agreement_vs_bits.png")

    # 4. the methods side by side, one chart per bit width
    if len(methods) > 1:
        written += plot_methods(plt, out, quant, methods, run_info)

    # 5. per-layer sensitivity
    if sensitivity:
        layers = sorted(sensitivity.get("layers", []), key=lambda l: l.get("rank", 0))[:25]
        keep = sensitivity.get("keep", [])
        fig, axes = plt.subplots(1, 2 if keep else 1, figsize=(11 if keep else 7.5, max(4.0, 0.28 * len(layers) + 1.2)),
                                 dpi=100, squeeze=False, gridspec_kw={"width_ratios": [2, 1]} if keep else None)
        ax = axes[0][0]
        names = [l["name"] for l in layers][::-1]
        ax.barh(names, [l["delta_ppl_pct"] for l in layers][::-1], color="tab:red")
        ax.set_xlabel("perplexity change when only this layer is quantized (%)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"Most sensitive layers, {sensitivity.get('variant', '')}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        if keep:
            ax2 = axes[0][1]
            ax2.plot([k["keep"] for k in keep], [k["ppl"] for k in keep], marker="o")
            ax2.axhline(sensitivity.get("fp32_ppl", float("nan")), color="black", linestyle=":", label="fp32")
            ax2.set_xlabel("most sensitive layers kept fp32")
            ax2.set_ylabel("perplexity")
            ax2.set_title("Keeping the worst K in fp32", fontsize=10)
            ax2.grid(True, alpha=0.3)
            ax2.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, os.path.join(out, "sensitivity.png"))
        plt.close(fig)
        written.append(("sensitivity.png", f"Per-layer sensitivity to {sensitivity.get('variant', '')}: "
                                           "perplexity change with only that layer quantized, and the "
                                           "perplexity with the K most sensitive layers kept fp32."))
    return written


def _format_label(row):
    """The format of a row without its method: the canonical spec before the first +."""
    return row["variant"].split("+", 1)[0]


def plot_methods(plt, out, quant, methods, run_info):
    """methods_{B}bit.png per bit width: grouped bars, one group per format, one bar per method,
    height the paired mean delta NLL against fp32 (nats/token) with its 95% interval (the CLI's
    delta_nll_mean +- delta_nll_ci95). Below zero the variant predicts the text better than fp32."""
    written = []
    rows = [r for r in quant if isinstance(r.get("delta_nll_mean"), (int, float))
            and math.isfinite(r["delta_nll_mean"]) and isinstance(r.get("bits"), int)]
    for bits in sorted({r["bits"] for r in rows}):
        sel = [r for r in rows if r["bits"] == bits]
        present = [m for m in methods if any(_method(r) == m for r in sel)]
        formats = []
        for r in sel:
            if _format_label(r) not in formats:
                formats.append(_format_label(r))
        if len(present) < 2 and len(formats) < 2:
            continue
        width = 0.8 / len(present)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(formats) * max(1, len(present)) * 0.45 + 2.5), 4.6),
                               dpi=100)
        for j, m in enumerate(present):
            xs, ys, errs = [], [], []
            for i, f in enumerate(formats):
                r = next((r for r in sel if _format_label(r) == f and _method(r) == m), None)
                if r is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r["delta_nll_mean"])
                ci = r.get("delta_nll_ci95")
                errs.append(ci if isinstance(ci, (int, float)) and math.isfinite(ci) else 0.0)
            ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=m, color=METHOD_COLOURS.get(m, "tab:brown"))
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(formats)))
        ax.set_xticklabels(formats, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("mean delta NLL vs fp32 (nats/token), 95% CI")
        ax.set_title(f"Methods at {bits} bits — {_title_suffix(run_info)}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="method", title_fontsize=8)
        fig.tight_layout()
        name = f"methods_{bits}bit.png"
        save_figure(fig, os.path.join(out, name))
        plt.close(fig)
        written.append((name, f"Methods at {bits} bits: paired mean delta NLL against fp32 per format and method, "
                              "with its 95% interval (lower is better)."))
    return written
