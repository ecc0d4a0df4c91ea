"""Small SVG charts for the benchmark report, drawn with the standard library only (no
plotting package to install on a device-like machine, and the output is text that diffs).
"""

import math
from html import escape

W, H = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 78, 180, 40, 56
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
FONT = 'font-family="sans-serif" font-size="12"'


def _ticks(lo, hi, log):
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0 ** k for k in range(a, b + 1)]
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / 5))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2) if start + i * step <= hi + step / 2]


def _label(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


class _Axes:
    def __init__(self, xs, ys, logx, logy, y_zero=True):
        self.logx, self.logy = logx, logy
        xs = [x for x in xs if x > 0] if logx else xs
        ys = [y for y in ys if y > 0] if logy else ys
        self.x0, self.x1 = min(xs), max(xs)
        self.y0, self.y1 = (min(ys), max(ys))
        if not logy and y_zero:
            self.y0 = min(0.0, self.y0)
        if self.x0 == self.x1:
            self.x0, self.x1 = self.x0 * 0.5 or -1, self.x1 * 1.5 or 1
        if self.y0 == self.y1:
            self.y0, self.y1 = self.y0 * 0.5 if self.y0 else -1, self.y1 * 1.5 or 1
        self.xt = _ticks(self.x0, self.x1, logx)
        self.yt = _ticks(self.y0, self.y1, logy)
        self.x0, self.x1 = min(self.x0, self.xt[0]), max(self.x1, self.xt[-1])
        self.y0, self.y1 = min(self.y0, self.yt[0]), max(self.y1, self.yt[-1])

    def _f(self, v, lo, hi, log):
        if log:
            v, lo, hi = math.log10(max(v, 1e-12)), math.log10(lo), math.log10(hi)
        return (v - lo) / (hi - lo)

    def px(self, x):
        return LEFT + self._f(x, self.x0, self.x1, self.logx) * (W - LEFT - RIGHT)

    def py(self, y):
        return H - BOTTOM - self._f(y, self.y0, self.y1, self.logy) * (H - TOP - BOTTOM)


def _frame(title, xlabel, ylabel):
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-family="sans-serif" font-size="15">{escape(title)}</text>',
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle" {FONT}>{escape(xlabel)}</text>',
        f'<text transform="translate(16 {(TOP + H - BOTTOM) / 2}) rotate(-90)" text-anchor="middle" {FONT}>'
        f"{escape(ylabel)}</text>",
    ]


def _grid(ax, out, xlabels=True):
    for t in ax.yt:
        y = ax.py(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_label(t)}</text>')
    if xlabels:
        for t in ax.xt:
            x = ax.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" {FONT}>{_label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
               'fill="none" stroke="#444"/>')


def _legend(names, out):
    for i, name in enumerate(names):
        y = TOP + 10 + i * 20
        c = COLORS[i % len(COLORS)]
        out.append(f'<rect x="{W - RIGHT + 12}" y="{y - 9}" width="14" height="10" fill="{c}"/>')
        out.append(f'<text x="{W - RIGHT + 32}" y="{y}" {FONT}>{escape(name)}</text>')


def line_chart(path, title, series, xlabel, ylabel, logx=False, logy=False, diagonal=False):
    """series: {name: [(x, y), ...]}; `diagonal` draws y = x (offered = delivered)."""
    pts = [p for s in series.values() for p in s if all(math.isfinite(v) for v in p)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if diagonal:
        ys = ys + xs
    ax = _Axes(xs, ys, logx, logy)
    out = _frame(title, xlabel, ylabel)
    _grid(ax, out)
    if diagonal:
        lo, hi = max(ax.x0, ax.y0), min(ax.x1, ax.y1)
        out.append(f'<line x1="{ax.px(lo):.1f}" y1="{ax.py(lo):.1f}" x2="{ax.px(hi):.1f}" y2="{ax.py(hi):.1f}" '
                   'stroke="#999" stroke-dasharray="4 4"/>')
    for i, (name, s) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        s = [p for p in s if all(math.isfinite(v) for v in p) and (not logy or p[1] > 0)]
        d = " ".join(f"{ax.px(x):.1f},{ax.py(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in s:
            out.append(f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" r="3.5" fill="{c}"/>')
    _legend(series.keys(), out)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def bar_chart(path, title, groups, series, ylabel, logy=False, errors=None):
    """groups: category labels; series: {name: [value per group]}; errors: {name: [(lo, hi)]}."""
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if errors:
        vals += [b for e in errors.values() for lo_hi in e if lo_hi for b in lo_hi]
    ax = _Axes([0, 1], vals, False, logy)
    out = _frame(title, "", ylabel)
    _grid(ax, out, xlabels=False)
    n, k = len(groups), len(series)
    slot = (W - LEFT - RIGHT) / max(n, 1)
    bar = slot * 0.8 / max(k, 1)
    base = ax.py(ax.y0) if logy else ax.py(max(ax.y0, 0.0))
    for g, label in enumerate(groups):
        gx = LEFT + g * slot + slot * 0.1
        out.append(f'<text x="{LEFT + (g + 0.5) * slot:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" '
                   f"{FONT}>{escape(label)}</text>")
        for i, (name, s) in enumerate(series.items()):
            v = s[g]
            if v is None or not math.isfinite(v):
                continue
            x, y = gx + i * bar, ax.py(v)
            c = COLORS[i % len(COLORS)]
            out.append(f'<rect x="{x:.1f}" y="{min(y, base):.1f}" width="{bar * 0.92:.1f}" '
                       f'height="{abs(base - y):.1f}" fill="{c}"/>')
            if errors and errors.get(name) and errors[name][g]:
                lo, hi = errors[name][g]
                cx = x + bar * 0.46
                out.append(f'<line x1="{cx:.1f}" y1="{ax.py(lo):.1f}" x2="{cx:.1f}" y2="{ax.py(hi):.1f}" '
                           'stroke="black"/>')
    _legend(series.keys(), out)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
