"""Static HTML feature cards: top-activating contexts per model, activation histograms, attribution numbers.

Usage:

    examples = card_examples(cc, model_dirs, latents)              # runs the models on eval text
    write_cards(out_dir, latents, examples, attribution, notes)    # out_dir/index.html + cards/<l>.html
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from featalign.io import atomic_write_text


@torch.no_grad()
def card_examples(
    cc,
    model_dirs: dict,
    latents: list[int],
    n_seqs: int = 256,
    top_n: int = 8,
    context: tuple[int, int] = (16, 4),
    seed: int = 0,
    progress: bool = True,
    text=None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """{latent: {model: {"top": [(activation, left, token, right)], "acts": nonzero activations}}}.

    `model_dirs` maps the crosscoder's model names to folders, hub ids or loaded bridges. Each model's
    latents are `Crosscoder.encode_as` of its own activations on `n_seqs` sequences of `text` (a token
    source, `featalign.activations.as_source`: default the organisms' eval-split task text).
    """
    from featalign.activations import TaskSuiteSource, as_source, token_batches
    from featalign.models import as_model, capture_models

    names = tuple(cc.cfg.models)
    if tuple(model_dirs) != names:
        raise ValueError(f"model_dirs {tuple(model_dirs)} must name the crosscoder's models {names} in order")
    models = [as_model(d, device=device, dtype=dtype) for d in model_dirs.values()]  # folders on device, in dtype
    tok = models[0].tokenizer
    source = as_source(text) if text is not None else TaskSuiteSource(split="eval", seed=seed)
    _, ids, attn = next(iter(token_batches(source, tok, n_seqs, int(models[0].cfg.n_ctx))))
    mask = attn.bool()
    mask[:, 0] &= ids[:, 0] != tok.bos_token_id  # a <bos> activation is an outlier, never a card example
    S, T = ids.shape
    idx = torch.tensor(latents, dtype=torch.long)
    out: dict = {lat: {} for lat in latents}
    for m, (name, model) in enumerate(tqdm(list(zip(names, models)), desc="feature cards", disable=not progress)):
        acts = capture_models([model], ids.to(model.cfg.device), attn.to(model.cfg.device), cc.cfg.hooks)[:, :, 0]
        acts = acts.to(cc.W_enc.device, torch.float32)  # the crosscoder's device and dtype, whatever the model's
        f = cc.encode_as(acts.reshape(S * T, *acts.shape[2:]), m, latents=idx).view(S, T, -1) * mask[..., None]
        for j, lat in enumerate(latents):
            v = f[..., j]
            top = torch.topk(v.flatten(), min(top_n, v.numel()))
            ex = []
            for val, flat in zip(top.values.tolist(), top.indices.tolist()):
                if val <= 0:
                    break
                s, t = divmod(flat, T)
                row = ids[s].tolist()
                left = tok.decode(
                    [x for x in row[max(0, t - context[0]) : t] if x not in (tok.bos_token_id, tok.pad_token_id)]
                )
                right = tok.decode([x for x in row[t + 1 : t + 1 + context[1]] if x != tok.pad_token_id])
                ex.append((float(val), left, tok.decode([row[t]]), right))
            out[lat][name] = {"top": ex, "acts": v[v > 0].tolist()}
    return out


def activation_histogram(acts_by_model: dict[str, list[float]]):
    """The card's figure: each model's nonzero activations of one latent, one step histogram per model on
    shared bins. The x-axis spans the data, not [0, max]: a latent's nonzero activations often sit far from
    0 (2.3-3, say), and an axis from 0 squeezes them into a sliver."""
    from featalign.plotting import pyplot

    fig, ax = pyplot().subplots(figsize=(5.5, 2.4))
    allv = [a for v in acts_by_model.values() for a in v]
    lo, hi = (min(allv), max(allv)) if allv else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    bins = np.linspace(lo - pad, hi + pad, 30)
    for name, v in acts_by_model.items():
        ax.hist(v, bins=bins, histtype="step", lw=1.5, label=f"{name} ({len(v)} tokens)")
    ax.set_xlim(bins[0], bins[-1])
    ax.set_xlabel("activation (nonzero)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the data
    fig.tight_layout()
    return fig


def _hist_png(acts_by_model: dict[str, list[float]]) -> str:
    from featalign.plotting import pyplot

    fig = activation_histogram(acts_by_model)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


_CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:1em auto} table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%} .tok{background:#fd8;font-weight:bold}"
    "code{white-space:pre}"
)


def _numbers_table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = ", ".join(
                f"{a}: {b:.3g}" if isinstance(b, float) else f"{a}: {b}"
                for a, b in v.items()
                if not isinstance(b, dict)
            )
        elif isinstance(v, float):
            v = f"{v:.4g}"
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_card(latent: int, examples: dict, numbers: dict, note: str = "") -> str:
    """One latent's self-contained HTML page (numbers, inline histogram, top examples per model), so a card opens
    from disk without a server."""
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>latent {latent}</title><style>{_CSS}</style>",
        f"<p><a href='../index.html'>index</a></p><h1>Latent {latent}</h1>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("<h2>Attribution</h2>" + _numbers_table(numbers))
    if "latent_scaling" in numbers:
        parts.append("<h3>Latent Scaling</h3>" + _numbers_table(numbers["latent_scaling"]))
    parts.append(
        f"<h2>Activation histogram per model</h2><img src='data:image/png;base64,"
        f"{_hist_png({m: e['acts'] for m, e in examples.items()})}'>"
    )
    parts.append("<h2>Top-activating examples</h2>")
    for m, e in examples.items():
        parts.append(f"<h3>{html.escape(m)}</h3><table><tr><th>act</th><th>context</th></tr>")
        for val, left, tokn, right in e["top"]:
            parts.append(
                f"<tr><td>{val:.3f}</td><td><code>{html.escape(left)}<span class='tok'>{html.escape(tokn)}"
                f"</span>{html.escape(right)}</code></td></tr>"
            )
        if not e["top"]:
            parts.append("<tr><td colspan=2>never fires on this text</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)


def write_cards(
    out_dir: str | Path,
    latents: list[int],
    examples: dict,
    numbers: dict[int, dict],
    notes: dict[int, str] | None = None,
    title: str = "Feature cards",
) -> Path:
    """Write `cards/<latent>.html` for each latent and `index.html` linking them (no server needed)."""
    out = Path(out_dir)
    notes = notes or {}
    rows = []
    for lat in latents:
        atomic_write_text(
            out / "cards" / f"{lat}.html", render_card(lat, examples[lat], numbers[lat], notes.get(lat, ""))
        )
        n = numbers[lat]
        mas = ", ".join(f"{k} {v:.2f}" for k, v in n.get("mas", {}).items())
        rows.append(
            f"<tr><td><a href='cards/{lat}.html'>{lat}</a></td><td>{html.escape(str(n.get('class', '')))}</td>"
            f"<td>{html.escape(mas)}</td><td>{html.escape(notes.get(lat, ''))}</td></tr>"
        )
    atomic_write_text(
        out / "index.html",
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<h1>{html.escape(title)}</h1><table><tr><th>latent</th><th>class</th><th>MAS</th><th>why listed</th></tr>"
        + "".join(rows)
        + "</table>",
    )
    atomic_write_text(out / "cards.json", json.dumps({str(lat): numbers[lat] for lat in latents}, indent=1))
    return out / "index.html"
