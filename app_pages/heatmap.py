"""Token-level influence as HTML for the Explore page: every token is escaped text, never markup."""

from __future__ import annotations

import html

import numpy as np

from gdig.studio.explain import TokenInfluence


def heatmap_html(ti: TokenInfluence) -> str:
    """Tokens as escaped text on a red (hurts) to green (helps) background; user text is never markup."""
    scale = float(np.abs(ti.contributions).max()) or 1.0
    spans = []
    for i, (t, c) in enumerate(zip(ti.tokens, ti.contributions.tolist(), strict=True)):
        a = min(abs(c) / scale, 1.0) * 0.85
        rgb = "22,163,74" if c > 0 else "220,38,38"
        style = f"background: rgba({rgb},{a:.3f}); padding: 1px 0; border-radius: 2px;"
        if i < ti.n_prompt:
            style += " opacity: 0.75;"
        text = html.escape(t).replace("\n", "&#8629;\n")  # pre-wrap keeps the line break
        spans.append(f'<span title="{c:+.4g}" style="{style}">{text}</span>')
    return '<div style="font-family: monospace; line-height: 1.8; white-space: pre-wrap;">' + "".join(spans) + "</div>"
