"""Token attributions with Integrated Gradients (Sundararajan et al., 2017) on the input token embeddings
of any model with `input_embeddings()` (encoderlab/models/capabilities.py), and an offline HTML view.

The attributed quantity is the target class logit; the baseline is the same sequence with every token
except the special ones ([CLS]/[SEP], <s>/</s>) replaced by [PAD]. By completeness, the raw attributions
of a text sum to logit(x) - logit(baseline), up to the reported convergence delta."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from encoderlab.analysis.attention import encode, eval_mode, real_tokens
from encoderlab.analysis.progress import bar
from encoderlab.models.capabilities import HasInputEmbeddings, skip_without


@dataclass
class TokenAttribution:
    text: str
    tokens: list[str]
    scores: list[float]  # per token: summed over the embedding dimension, divided by the L2 norm over tokens
    target: int
    target_label: str
    probability: float  # softmax probability of the target class
    delta: float  # convergence delta: sum of raw attributions - (logit(x) - logit(baseline))
    raw_sum: float = 0.0  # sum of raw attributions (before normalisation)


def ig_baseline(input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """`input_ids` with every token but [CLS]/[SEP]/<s>/</s> replaced by the padding id."""
    if tokenizer.pad_token_id is None:
        raise ValueError("Integrated Gradients needs a tokenizer with a padding token for its baseline.")
    special = {
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    } - {None}
    keep = torch.isin(input_ids, torch.tensor(sorted(special), device=input_ids.device))
    return torch.where(keep, input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))


def _logits_fn(net: nn.Module, keys: tuple[str, ...]):
    """Captum calls this with input_ids then the other inputs positionally, each expanded to the steps."""

    def forward(input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return net({"input_ids": input_ids, **dict(zip(keys, rest, strict=True))}).float()

    return forward


def integrated_gradients(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    label_names: Sequence[str],
    target: int | None = None,
    n_steps: int = 50,
    max_length: int = 128,
    progress: bool | None = False,
) -> list[TokenAttribution]:
    """Integrated-Gradients attributions of each text's tokens toward `target` (default: the predicted
    class), one text at a time (progress: a bar over the texts), in eval mode (the training flags are
    restored afterwards)."""
    from encoderlab.errors import require_extra

    require_extra("captum", "captum", "analysis", "Integrated Gradients (analysis.attributions)")
    from captum.attr import LayerIntegratedGradients

    if not isinstance(net, HasInputEmbeddings):
        raise TypeError(f"{type(net).__name__} has no input_embeddings() method.")
    out = []
    with eval_mode(net), torch.enable_grad():
        for text in bar(texts, "Integrated Gradients", progress):
            batch = encode(net, tokenizer, [text], max_length)
            keys = tuple(k for k in batch if k != "input_ids")
            forward = _logits_fn(net, keys)
            lig = LayerIntegratedGradients(forward, net.input_embeddings())
            ids, extra = batch["input_ids"], tuple(batch[k] for k in keys)
            with torch.no_grad():
                probs = forward(ids, *extra).softmax(dim=-1)[0]
            t = int(probs.argmax()) if target is None else int(target)
            if not 0 <= t < probs.numel():
                raise ValueError(f"target={t} is not a class index of this model (0..{probs.numel() - 1}).")
            attr, delta = lig.attribute(
                ids,
                baselines=ig_baseline(ids, tokenizer),
                additional_forward_args=extra,
                target=t,
                n_steps=n_steps,
                return_convergence_delta=True,
            )
            raw = attr.sum(dim=-1)[0].detach().double().cpu()  # (T,)
            norm = raw.norm()
            scores = raw / norm if norm > 0 else raw
            out.append(
                TokenAttribution(
                    text=text,
                    tokens=real_tokens(tokenizer, ids[0].cpu(), batch["attention_mask"][0].cpu()),
                    scores=scores.tolist(),
                    target=t,
                    target_label=str(label_names[t]) if t < len(label_names) else str(t),
                    probability=float(probs[t]),
                    delta=float(delta.reshape(-1)[0]),
                    raw_sum=float(raw.sum()),
                )
            )
    return out


# ---------------------------------------------------------------- HTML

_SPECIAL = re.compile(r"^(\[[A-Z]+\]|<[^<>\s]+>)$")
_WORD_START = ("Ġ", "▁")  # byte-level BPE / SentencePiece mark the start of a word

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 60rem;
       color: #1f2328; line-height: 1.5; }
h1 { font-size: 1.4rem; }
.note { background: #f6f8fa; border-left: 4px solid #8c959f; padding: .6rem 1rem; font-size: .9rem; }
.legend { display: flex; align-items: center; gap: .5rem; font-size: .85rem; margin: 1rem 0; }
.bar { width: 16rem; height: .9rem; border: 1px solid #d0d7de;
       background: linear-gradient(to right, rgba(220,38,38,.85), rgba(255,255,255,0), rgba(22,163,74,.85)); }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.meta { font-size: .85rem; color: #57606a; margin-bottom: .4rem; }
.label { font-weight: 600; color: #1f2328; }
.tokens { font-size: 1.05rem; line-height: 2.1; }
.tok { padding: .1rem .05rem; border-radius: 3px; }
.special { color: #8c959f; font-size: .8rem; }
.text { font-size: .85rem; color: #57606a; margin-top: .4rem; }
"""


def _pieces(tokens: list[str]) -> list[tuple[str, bool]]:
    """(display text, joins the previous piece) per token: WordPiece '##' and BPE pieces without a
    word-start mark are drawn attached to the previous token."""
    marked = any(t.startswith(_WORD_START) for t in tokens)
    out = []
    for i, tok in enumerate(tokens):
        if _SPECIAL.match(tok):
            out.append((tok, False))
        elif tok.startswith("##"):
            out.append((tok[2:], i > 0))
        elif tok.startswith(_WORD_START):
            out.append((tok[1:], False))
        else:
            out.append((tok, marked and i > 0 and not _SPECIAL.match(tokens[i - 1])))
    return out


def _color(score: float, scale: float) -> str:
    alpha = 0.85 * min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    rgb = "22,163,74" if score >= 0 else "220,38,38"
    return f"rgba({rgb},{alpha:.3f})"


def _tokens_html(a: TokenAttribution) -> str:
    scale = max((abs(s) for s in a.scores), default=0.0)
    parts = []
    for (piece, joined), tok, score in zip(_pieces(a.tokens), a.tokens, a.scores, strict=True):
        cls = "tok special" if _SPECIAL.match(tok) else "tok"
        tip = html.escape(f"{tok}: {score:+.3f}", quote=True)
        span = (
            f'<span class="{cls}" style="background:{_color(score, scale)}" title="{tip}">'
            f"{html.escape(piece)}</span>"
        )
        parts.append(span if joined or not parts else " " + span)
    return "".join(parts)


def attributions_html(
    attrs: Sequence[TokenAttribution],
    path: str | Path,
    title: str = "Token attributions (Integrated Gradients)",
) -> Path:
    """A self-contained page (inline CSS, no scripts, no external resources) with each text's tokens
    coloured by attribution: green toward the target class, red against it."""
    cards = []
    for i, a in enumerate(attrs):
        cards.append(
            f'<div class="card"><div class="meta">#{i} &middot; target class '
            f'<span class="label">{html.escape(a.target_label)}</span> '
            f"(p = {a.probability:.3f}) &middot; convergence &delta; = {a.delta:+.4f}</div>"
            f'<div class="tokens">{_tokens_html(a)}</div>'
            f'<div class="text">{html.escape(a.text)}</div></div>'
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Integrated Gradients on the input token embeddings: how much each token moved the target
class logit away from a baseline in which every non-special token is [PAD]. The target is the predicted
class unless one was requested. Colour intensity is relative to the strongest token of each text; hover a
token for its score (divided by the L2 norm over the text). <b>Attention is not explanation:</b> attention
weights show where the model looks, attributions estimate what changed its output; the two often disagree
and neither is a faithful account of the model's reasoning on its own.</p>
<div class="legend"><span>against the target</span><span class="bar"></span><span>toward the target</span></div>
{"".join(cards)}
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def attribution_report(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    out_dir: str | Path,
    label_names: Sequence[str],
    n_steps: int = 50,
    max_length: int = 128,
    progress: bool | None = False,
) -> list[Path]:
    """Integrated Gradients toward the predicted class of each text: attributions.html and
    attributions.json in `out_dir`; nothing for a model without input_embeddings."""
    if skip_without(net, HasInputEmbeddings, "input_embeddings()", "Attributions"):
        return []
    out_dir = Path(out_dir)
    attrs = integrated_gradients(
        net, tokenizer, texts, label_names, n_steps=n_steps, max_length=max_length, progress=progress
    )
    html_path = attributions_html(attrs, out_dir / "attributions.html")
    json_path = out_dir / "attributions.json"
    summary = {
        "method": "integrated_gradients",
        "layer": "input token embeddings",
        "n_steps": n_steps,
        "baseline": "non-special tokens replaced by the padding token",
        "attributed": "target class logit",
        "texts": [asdict(a) for a in attrs],
    }
    json_path.write_text(json.dumps(summary, indent=2))
    return [html_path, json_path]
