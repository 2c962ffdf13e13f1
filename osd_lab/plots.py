"""Plots of an online run, shared by the main job, notebook 06 and the dashboard."""

import math

import matplotlib.pyplot as plt


def moving_average(values, window):
    """Trailing mean over the last ``window`` values (shorter at the start),
    skipping NaN (a query where nothing was drafted has no alpha); NaN where
    the window holds nothing else."""
    out = []
    for i in range(len(values)):
        known = [v for v in values[max(0, i + 1 - window):i + 1] if not math.isnan(v)]
        out.append(sum(known) / len(known) if known else math.nan)
    return out


def domain_shifts(domains):
    """Indices where the query domain changes, with the new domain."""
    return [(i, d) for i, d in enumerate(domains) if i == 0 or d != domains[i - 1]]


def block_spans(domains, max_blocks=12):
    """``(start, stop)`` of each domain block of a sharp stream (at most
    ``max_blocks`` blocks), or one span over a stream that shifts more often
    (smooth, iid)."""
    starts = [i for i, _ in domain_shifts(domains)]
    if len(starts) > max_blocks:
        starts = [0]
    return list(zip(starts, starts[1:] + [len(domains)]))


def plot_by_block(ax, values, domains, window, **style):
    """The moving average of ``values`` restarting at each domain block, one
    line per block, so that no line joins two domains (the label on the first
    block only)."""
    for n, (a, b) in enumerate(block_spans(domains)):
        ax.plot(range(a, b), moving_average(values[a:b], window),
                **(style if n == 0 else {k: v for k, v in style.items() if k != "label"}))


def plot_alpha(history, ax=None, window=20, title="alpha over queries"):
    """Per-query alpha, its moving average (restarting at each block of a sharp
    stream, one line per block), the domain shifts and the first update; the
    legend sits above the data (alpha never exceeds 1). Used by notebooks 06
    and 07, the dashboard and the main job."""
    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    alpha = history["alpha"]
    ax.plot(alpha, ".", alpha=0.25, color="tab:blue", label="per query")
    plot_by_block(ax, alpha, history["domain"], window, color="tab:blue",
                  label=f"moving average (at most {window}, per block)")
    shifts = domain_shifts(history["domain"])
    if len(shifts) <= 12:  # a sharp stream: mark each block
        for i, domain in shifts:
            ax.axvline(i, color="grey", lw=0.8, ls="--")
            ax.text(i + 1, 1.02, domain, fontsize=8, va="bottom")
    for query, *_ in history["updates"][:1]:
        ax.axvline(query, color="tab:green", lw=0.8, label="first update")
    ax.set(xlabel="query", ylabel="alpha = sum min(p, q)", ylim=(0, 1.32), title=title)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(loc="upper right", fontsize=8, ncol=3, framealpha=0.9)
    return ax


def plot_tau(history, ax=None, window=20):
    """Tokens per target call (accepted drafts + 1) over queries, with its
    moving average per block."""
    ax = ax or plt.subplots(figsize=(9, 3))[1]
    ax.plot(history["tau"], ".", alpha=0.25, color="tab:orange")
    plot_by_block(ax, history["tau"], history["domain"], window, color="tab:orange")
    ax.set(xlabel="query", ylabel="tokens per target call",
           title="accepted tokens per step (+1 from the target)")
    return ax


def plot_speed(history, ax=None, window=20, break_even=None):
    """Served tokens/s (decoding + updates) and plain decoding of the same
    queries (``baseline=True``), per query, as moving averages over ``window``
    (restarting at each block of a sharp stream, one line per block);
    break_even: ``{domain: query index}`` where a block broke even, marked."""
    ax = ax or plt.subplots(figsize=(9, 3))[1]
    served = [t / (d + u) for t, d, u in zip(history["new_tokens"], history["latency_s"],
                                             history["update_s"])]
    plain = [t / s for t, s in zip(history["baseline_tokens"], history["baseline_s"])]
    domains = history["domain"]
    plot_by_block(ax, served, domains, window, color="tab:orange",
                  label="served (updates counted)")
    plot_by_block(ax, plain, domains, window, color="grey", ls="--", label="plain decoding")
    for i, _ in domain_shifts(history["domain"])[1:13]:
        ax.axvline(i, color="grey", lw=0.8, ls="--")
    for n, i in enumerate((break_even or {}).values()):
        ax.axvline(i, color="tab:green", lw=1.2, label="break-even (served time < plain's)"
                   if n == 0 else None)
    ax.set(xlabel="query", ylabel=f"tokens/s (moving average, {window})", ylim=(0, None))
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_count_grid(counts, row_labels, max_count, ax=None, title=None, label="count"):
    """Integer counts per row and step as a grid with one discrete colour per
    count (0..``max_count``); NaN cells (a row that had left) stay blank.

    counts: a 2-D array-like (rows, steps) of integers or NaN.
    row_labels: one label per row; label: the colour bar's. Used by notebook
    08 (accepted drafted tokens per row and step of a batch). Returns the Axes.
    """
    import numpy as np
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        ax = plt.subplots(figsize=(9, 3))[1]
    colours = plt.get_cmap("viridis", max_count + 1)(range(max_count + 1))
    cmap = ListedColormap(colours).with_extremes(bad="white")
    norm = BoundaryNorm([c - 0.5 for c in range(max_count + 2)], cmap.N)
    image = ax.imshow(np.asarray(counts, dtype=float), cmap=cmap, norm=norm, aspect="auto",
                      interpolation="nearest")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    if title:
        ax.set_title(title)
    bar = ax.figure.colorbar(image, ax=ax, ticks=range(max_count + 1))
    bar.set_label(label)
    return ax


def plot_draft_schedule(schedule, cap, draft_lens, most_accepted, ax=None, title=None):
    """A batch's draft length per step, its two causes drawn apart: the
    schedule's wish (BASS's Algorithm 1) and the cap that leaves the
    longest-running row room to finish, with the length drafted (the smaller
    of the two) and the most any row accepted.

    All four are lists with one value per step. The y axis stops a little
    above the schedule's peak, so a cap far above it enters from the top
    where it starts to bind. Used by notebook 08. Returns the Axes.
    """
    if ax is None:
        ax = plt.subplots(figsize=(8, 3.2))[1]
    steps = range(len(draft_lens))
    ax.step(steps, schedule, where="mid", color="tab:blue", linewidth=2,
            label="schedule (Algorithm 1)")
    ax.step(steps, cap, where="mid", color="tab:red", linestyle="--",
            label="cap: longest row's tokens left - 1")
    ax.plot(steps, draft_lens, "o", color="black", markersize=4,
            label="drafted = min(schedule, cap)")
    ax.bar(steps, most_accepted, color="tab:green", alpha=0.35, width=0.8,
           label="most accepted by a row")
    top = max(list(schedule) + list(most_accepted) + [1]) + 3
    ax.set_ylim(0, top)
    ax.set_xlabel("step")
    ax.set_ylabel("tokens")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return ax


def plot_method_bars(values, errors=None, ax=None, ylabel=None, title=None, reference=None,
                     value_labels=False):
    """Grouped bars: one group per key of each method's dict (e.g. a domain),
    one bar per method, with optional error bars.

    values: ``{method: {group: value}}``.
    errors: ``{method: {group: (low, high)}}``, e.g. the range over repeats
        (the bar is then best drawn at the median).
    reference: a y value drawn as a grey dashed line (e.g. 1 for a speedup).
    value_labels: write each bar's value above it.
    The legend sits outside the axes, covering no bar. Used by notebooks 04,
    06 (alpha before and after) and 09 (speedup and tokens per pass per method
    and domain). Returns the Axes.
    """
    if ax is None:
        ax = plt.subplots(figsize=(9, 3.5))[1]
    methods = list(values)
    groups = list(values[methods[0]])
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        heights = [values[method][group] for group in groups]
        yerr = None
        if errors is not None and method in errors:
            yerr = [[h - errors[method][g][0] for h, g in zip(heights, groups)],
                    [errors[method][g][1] - h for h, g in zip(heights, groups)]]
        bars = ax.bar(xs, heights, width, yerr=yerr, capsize=2, label=method)
        if value_labels:
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), groups)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return ax
