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


def block_moving_average(values, domains, window, max_blocks=12):
    """``moving_average`` that restarts at each domain shift of a sharp stream
    (at most ``max_blocks`` blocks), so that no average mixes two domains; over
    a stream that shifts more often (smooth, iid), the plain moving average."""
    starts = [i for i, _ in domain_shifts(domains)]
    if len(starts) > max_blocks:
        return moving_average(values, window)
    bounds = starts + [len(values)]
    return [v for a, b in zip(bounds, bounds[1:]) for v in moving_average(values[a:b], window)]


def plot_alpha(history, ax=None, window=20, title="alpha over queries"):
    """Per-query alpha, its moving average, and the domain shifts of a sharp stream."""
    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    alpha = history["alpha"]
    ax.plot(alpha, ".", alpha=0.25, color="tab:blue", label="per query")
    ax.plot(block_moving_average(alpha, history["domain"], window), color="tab:blue",
            label=f"moving average ({window}, per block)")
    shifts = domain_shifts(history["domain"])
    if len(shifts) <= 12:  # a sharp stream: mark each block
        for i, domain in shifts:
            ax.axvline(i, color="grey", lw=0.8, ls="--")
            ax.text(i + 1, 1.02, domain, fontsize=8, va="bottom")
    for query, *_ in history["updates"][:1]:
        ax.axvline(query, color="tab:green", lw=0.8, label="first update")
    ax.set(xlabel="query", ylabel="alpha = sum min(p, q)", ylim=(0, 1.1), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_tau(history, ax=None, window=20):
    """Tokens per target call (accepted drafts + 1) over queries."""
    ax = ax or plt.subplots(figsize=(9, 3))[1]
    ax.plot(history["tau"], ".", alpha=0.25, color="tab:orange")
    ax.plot(block_moving_average(history["tau"], history["domain"], window), color="tab:orange")
    ax.set(xlabel="query", ylabel="tokens per target call",
           title="accepted tokens per step (+1 from the target)")
    return ax


def plot_speed(history, ax=None, window=20, break_even=None):
    """Served tokens/s (decoding + updates) and plain decoding of the same
    queries (``baseline=True``), per query, as moving averages over ``window``
    (restarting at each block of a sharp stream);
    break_even: ``{domain: query index}`` where a block broke even, marked."""
    ax = ax or plt.subplots(figsize=(9, 3))[1]
    served = [t / (d + u) for t, d, u in zip(history["new_tokens"], history["latency_s"],
                                             history["update_s"])]
    plain = [t / s for t, s in zip(history["baseline_tokens"], history["baseline_s"])]
    domains = history["domain"]
    ax.plot(block_moving_average(served, domains, window), color="tab:orange",
            label="served (updates counted)")
    ax.plot(block_moving_average(plain, domains, window), color="grey", ls="--",
            label="plain decoding")
    for i, _ in domain_shifts(history["domain"])[1:13]:
        ax.axvline(i, color="grey", lw=0.8, ls="--")
    for n, i in enumerate((break_even or {}).values()):
        ax.axvline(i, color="tab:green", lw=1.2, label="break-even (served time < plain's)"
                   if n == 0 else None)
    ax.set(xlabel="query", ylabel=f"tokens/s (moving average, {window})", ylim=(0, None))
    ax.legend(loc="lower right", fontsize=8)
    return ax
