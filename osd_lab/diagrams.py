"""Schematic drawings for the notebooks (matplotlib): pictures of how an
algorithm runs, as opposed to ``osd_lab.plots``, which plots measured data.
Each function draws onto an Axes (a new one if none is given) and returns it."""


def draw_osd_loop(ax=None, update_interval=4):
    """The online speculative decoding loop as a schematic: a query is served
    with speculative decoding (draft proposes, target verifies), the query and
    the target's logits go into the replay buffer, every ``update_interval``
    queries the draft is distilled on a batch from the buffer, and the new
    draft is swapped in for the next queries. Returns the Axes. Notebook 06,
    section 1."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax = ax or plt.subplots(figsize=(9, 3.6))[1]
    ax.set(xlim=(0, 10), ylim=(0, 4.2))
    ax.axis("off")
    boxes = {  # name: (x, y, width, height, text, colour)
        "query": (0.1, 2.9, 1.7, 0.9, "query\n(prompt)", "#eeeeee"),
        "serve": (2.6, 2.7, 3.0, 1.3, "serve: speculative decoding\ndraft proposes, target verifies"
                  "\n(output = the target's)", "#d6e9f8"),
        "answer": (8.1, 2.9, 1.8, 0.9, "answer", "#eeeeee"),
        "buffer": (6.3, 0.3, 3.4, 1.3, "replay buffer\nlast buffer_size queries\n"
                   "+ target's logits", "#fde7c8"),
        "distil": (2.3, 0.3, 3.0, 1.3, f"distil the draft\nevery {update_interval} queries\n"
                   "(a batch from the buffer)", "#d9f2d9"),
    }
    for x, y, w, h, text, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour,
                                    ec="black", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(start, end, text=None, at=(0, 0), **kw):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                     lw=1.3, color="black", **kw))
        if text:
            ax.text(*at, text, fontsize=8.5, ha="center", va="center", style="italic")

    arrow((1.85, 3.35), (2.55, 3.35))
    arrow((5.65, 3.35), (8.05, 3.35), "1. serve", (6.85, 3.55))
    arrow((5.65, 2.9), (7.6, 1.65), "2. store the query and the\ntarget's logits (if it wrote\nany of the answer)",
          (8.6, 2.3))
    arrow((6.25, 0.95), (5.35, 0.95), "3. sample", (5.8, 1.25))
    arrow((3.8, 1.65), (3.8, 2.65), "4. swap in\nthe new draft", (2.75, 2.15))
    return ax


def draw_speculative_step(ax=None, draft_len=4, accepted=2):
    """One step of speculative decoding with its KV-cache rollback, as a
    schematic in four rows: (1) the draft proposes ``draft_len`` tokens
    x_i ~ q_i, one cheap pass each; (2) the target scores them all in one
    pass, giving p_1 .. p_(draft_len + 1); (3) verification keeps the first
    ``accepted`` guesses and adds one target token (a residual sample after a
    rejection, the bonus token from p_(draft_len + 1) when all are kept);
    (4) both caches are cropped back to the kept tokens. Returns the Axes.
    Notebook 02, section 4."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not 0 <= accepted <= draft_len:
        raise ValueError(f"accepted must be in [0, draft_len={draft_len}], got {accepted}")
    width = 3.2 + 1.0 * (draft_len + 3) + 4.6  # labels, boxes, notes
    ax = ax or plt.subplots(figsize=(width * 0.95, 4.2))[1]
    ax.set(xlim=(-0.2, width), ylim=(-0.35, 4.6))
    ax.axis("off")
    colours = dict(context="#e6e6e6", draft="#fbd3a6", target="#c9e0f5", kept="#cdebcd",
                   rejected="#f6c6c6", new="#9bd49b")

    def box(x, y, text, colour, hatch=None, strike=False, fontsize=9):
        ax.add_patch(Rectangle((x, y), 0.86, 0.55, fc=colour, ec="black", lw=1, hatch=hatch))
        ax.text(x + 0.43, y + 0.275, text, ha="center", va="center", fontsize=fontsize)
        if strike:
            ax.plot([x + 0.05, x + 0.81], [y + 0.05, y + 0.5], color="firebrick", lw=1.5)

    def label(y, text):
        ax.text(0, y + 0.275, text, ha="left", va="center", fontsize=9, fontweight="bold")

    first = 3.2  # x of the first context box
    xs = [first + 1.0 * (2 + i) for i in range(draft_len + 1)]  # x_1 .. x_G, then one more
    rows = dict(draft=3.85, target=2.75, verify=1.55, cache=0.2)

    # 1. draft: the context, then draft_len guesses, one cheap pass each
    label(rows["draft"], f"1. draft: {draft_len} cheap\n    passes, x_i ~ q_i")
    for j, text in enumerate(("...", "ctx")):
        box(first + j, rows["draft"], text, colours["context"])
    for i in range(draft_len):
        box(xs[i], rows["draft"], f"x{i + 1}", colours["draft"])

    # 2. target: one pass over the guesses scores every one, and one more
    label(rows["target"], "2. target: ONE pass\n    over all guesses")
    for i in range(draft_len + 1):
        box(xs[i], rows["target"], f"p{i + 1}", colours["target"])
    ax.text(xs[draft_len] + 1.0, rows["target"] + 0.275,
            f"p_i judges x_i; p{draft_len + 1} predicts the token after x{draft_len}",
            ha="left", va="center", fontsize=8.5)

    # 3. verify: keep a prefix, then one token from the target
    label(rows["verify"], "3. verify: keep x_i\n    w.p. min(1, p_i/q_i)")
    for i in range(accepted):
        box(xs[i], rows["verify"], f"x{i + 1} \u2713", colours["kept"])
    if accepted < draft_len:
        box(xs[accepted], rows["verify"], f"x{accepted + 1} \u2717", colours["rejected"],
            strike=True)
        for i in range(accepted + 1, draft_len):
            box(xs[i], rows["verify"], f"x{i + 1}", "white", hatch="//")
        note = (f"rejected: the new token is drawn from norm(max(p{accepted + 1} - "
                f"q{accepted + 1}, 0));\nguesses after it are never looked at")
        new_x, new_text = xs[accepted], "new"
    else:
        note = f"all kept: a bonus token is drawn from p{draft_len + 1}"
        new_x, new_text = xs[draft_len], "bonus"
    box(new_x, rows["verify"] - 0.62, new_text, colours["new"], fontsize=8)
    ax.text(xs[draft_len] + 1.0, rows["verify"] + 0.275, note, ha="left", va="center", fontsize=8.5)

    # 4. roll back: both caches keep the context and the kept guesses
    label(rows["cache"], "4. roll back both\n    KV caches")
    for j, text in enumerate(("...", "ctx")):
        box(first + j, rows["cache"], text, colours["context"])
    for i in range(draft_len):
        if i < accepted:
            box(xs[i], rows["cache"], f"x{i + 1}", colours["kept"])
        else:
            box(xs[i], rows["cache"], f"x{i + 1}", "white", hatch="//", strike=True)
    if accepted < draft_len:
        note = ("both cropped to context + kept guesses\n(DynamicCache.crop); both models "
                "read\nthe new token at the next step")
    else:
        note = (f"nothing to crop: next step the target\nreads the bonus token, the draft "
                f"x{draft_len}\nand the bonus (it never read x{draft_len})")
    ax.text(xs[draft_len] + 1.0, rows["cache"] + 0.275, note, ha="left", va="center",
            fontsize=8.5)
    ax.set_title(f"One speculative step: {draft_len} guesses, {accepted} kept, "
                 f"{accepted + 1} new tokens for one target pass", fontsize=10)
    return ax


def draw_overlap_and_residual(p, q, token_labels=None, axes=None):
    """The rejection-sampling argument as two bar charts over a few tokens.

    Left: each token's bar is split into min(p, q) (green: accepted, summing
    to alpha), the target's excess max(p - q, 0) (blue: the mass a rejection
    must supply) and the draft's excess max(q - p, 0) (orange: proposals that
    get rejected); p and q are marked on each bar. Right: the residual
    norm(max(p - q, 0)), what a rejection samples from. ``p``, ``q``: 1-D
    probabilities over the same tokens (tensors or lists); ``token_labels``:
    names for the x axis (default: the indices); ``axes``: two Axes to draw on.
    Returns the Figure. Notebook 02, section 3."""
    import matplotlib.pyplot as plt

    p, q = [float(v) for v in p], [float(v) for v in q]
    if len(p) != len(q) or not p:
        raise ValueError(f"p and q must be non-empty and of one length, got {len(p)} and {len(q)}")
    labels = list(token_labels) if token_labels is not None else [str(i) for i in range(len(p))]
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw=dict(width_ratios=[3, 2]))
    ax, ax_res = axes
    fig = ax.figure
    low = [min(a, b) for a, b in zip(p, q)]
    p_excess = [max(a - b, 0.0) for a, b in zip(p, q)]
    q_excess = [max(b - a, 0.0) for a, b in zip(p, q)]
    alpha = sum(low)
    xs = range(len(p))
    ax.bar(xs, low, 0.7, color="tab:green", alpha=0.8,
           label=f"min(p, q): accepted, sum = alpha = {alpha:.2f}")
    ax.bar(xs, p_excess, 0.7, bottom=low, color="tab:blue", alpha=0.55,
           label=f"max(p - q, 0): the residual, sum = 1 - alpha = {sum(p_excess):.2f}")
    ax.bar(xs, q_excess, 0.7, bottom=low, color="tab:orange", alpha=0.45, hatch="//",
           label=f"max(q - p, 0): rejected, sum = {sum(q_excess):.2f}")
    ax.plot(xs, p, "_", color="navy", markersize=22, markeredgewidth=2.5, label="p (target)")
    ax.plot(xs, q, "_", color="darkorange", markersize=22, markeredgewidth=2.5,
            label="q (draft)")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, max(max(p), max(q)) * 1.9)
    ax.set_xlabel("token")
    ax.set_ylabel("probability")
    ax.set_title("Where p and q overlap, a guess is kept")
    ax.legend(fontsize=8, loc="upper right")
    total = sum(p_excess)
    residual = [v / total if total > 0 else 0.0 for v in p_excess]
    ax_res.bar(xs, residual, 0.7, color="tab:blue", alpha=0.8)
    ax_res.set_xticks(list(xs), labels)
    ax_res.set_ylim(0, 1.05)
    ax_res.set_xlabel("token")
    ax_res.set_ylabel("probability")
    ax_res.set_title("After a rejection: norm(max(p - q, 0))")
    fig.tight_layout()
    return fig
