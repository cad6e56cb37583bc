"""Attention maps of any model with `attention_maps(batch)` (encoderlab/models/capabilities.py): collection
(padding stripped), attention rollout, the tokens the first token ([CLS] / <s>) attends to, heat maps and a
per-text report. Shapes: L layers, H heads, T tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from encoderlab.analysis.progress import bar
from encoderlab.models.capabilities import HasAttentionMaps, input_keys, max_positions, skip_without


@dataclass
class TextAttention:
    text: str
    tokens: list[str]
    maps: np.ndarray  # (L, H, T, T), padding removed


# ---------------------------------------------------------------- helpers shared with attributions.py


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """Eval mode inside, then every submodule's own training flag back (they may differ)."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def encode(
    net: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Padded, truncated batch on the model's device, with only the inputs the model takes."""
    limit = max_positions(net)
    max_length = min(max_length, limit) if limit else max_length
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    keys = {*input_keys(net), "input_ids", "attention_mask"}  # the analysis reads both
    device = next(net.parameters()).device
    return {k: enc[k].to(device) for k in enc if k in keys}


def real_tokens(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())


# ---------------------------------------------------------------- collection and rollout


def collect_attentions(
    net: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int = 128
) -> list[TextAttention]:
    """Attention maps per text, each (L, H, T, T) over its real tokens (padding rows/columns removed)."""
    if not isinstance(net, HasAttentionMaps):
        raise TypeError(f"{type(net).__name__} has no attention_maps(batch) method.")
    texts = list(texts)
    if not texts:
        return []
    batch = encode(net, tokenizer, texts, max_length)
    with eval_mode(net), torch.inference_mode():
        maps = net.attention_maps(batch)
    if not maps or any(m is None for m in maps):
        raise ValueError(f"{type(net).__name__}.attention_maps returned no attention weights.")
    stacked = torch.stack([m.float() for m in maps], dim=1).cpu()  # (B, L, H, T, T)
    out = []
    for i, text in enumerate(texts):
        keep = batch["attention_mask"][i].bool().cpu()  # works for left and right padding
        m = stacked[i][:, :, keep][:, :, :, keep]
        out.append(TextAttention(text, real_tokens(tokenizer, batch["input_ids"][i].cpu(), keep), m.numpy()))
    return out


def attention_rollout(maps: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema (2020): head-averaged attention plus identity for the residual stream, rows
    renormalised, multiplied from the first layer up. (L, H, T, T) -> (T, T), rows sum to 1."""
    maps = np.asarray(maps, dtype=np.float64)
    eye = np.eye(maps.shape[-1])
    rollout = eye
    for layer in maps:
        a = layer.mean(axis=0) + eye
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def _top(row: np.ndarray, tokens: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-row, kind="stable")[:k]
    return [(tokens[j], float(row[j])) for j in order]


def cls_rows(att: TextAttention) -> np.ndarray:
    """(L, T): head-averaged attention of the first token, per layer."""
    return att.maps[:, :, 0, :].mean(axis=1)


def cls_top_tokens(att: TextAttention, k: int = 5) -> list[list[tuple[str, float]]]:
    """Per layer, the k tokens the first token attends to most (head-averaged, descending), and as a last
    entry the same for the rollout."""
    rows = [*cls_rows(att), attention_rollout(att.maps)[0]]
    return [_top(row, att.tokens, k) for row in rows]


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(s: str) -> str:
    return s.replace("$", r"\$")  # a pair of $ would switch matplotlib to mathtext


def _title_text(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return _label(text if len(text) <= n else text[: n - 1] + "…")


def _fontsize(n_tokens: int, side: float) -> float:
    """Tick label size that fits one row of a `side`-inch heat map (72 points per inch)."""
    return float(np.clip(0.5 * 72 * side / max(n_tokens, 1), 4, 10))


def _heatmap(ax, matrix: np.ndarray, tokens: list[str], fontsize: float):
    im = ax.imshow(
        matrix, cmap="viridis", interpolation="nearest", vmin=0, vmax=max(float(matrix.max()), 1e-9)
    )
    labels = [_label(t) for t in tokens]
    ax.set_xticks(range(len(tokens)), labels=labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(tokens)), labels=labels, fontsize=fontsize)
    ax.set_xlabel("key (attended to)", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    return im


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _side(n_tokens: int, lo: float = 4.0, hi: float = 12.0) -> float:
    return float(np.clip(0.16 * n_tokens + 2, lo, hi))


def plot_head(att: TextAttention, layer: int, head: int, path: str | Path) -> Path:
    """Heat map of one head of one layer (0-based), tokens on both axes."""
    plt = _pyplot()
    n = len(att.tokens)
    side = _side(n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = _heatmap(ax, att.maps[layer, head], att.tokens, _fontsize(n, side))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    ax.set_title(f"layer {layer}, head {head}\n{_title_text(att.text)}", fontsize=9)
    return _save(fig, path)


def plot_layer_grid(att: TextAttention, layer: int, path: str | Path) -> Path:
    """All heads of one layer (0-based) in a grid with a shared colour scale."""
    plt = _pyplot()
    maps = att.maps[layer]  # (H, T, T)
    n_heads, n = maps.shape[0], len(att.tokens)
    cols = min(4, n_heads)
    rows = -(-n_heads // cols)
    panel = _side(n, 3.0, 6.0)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel * cols + 1, panel * rows + 0.8), squeeze=False, layout="constrained"
    )
    fontsize = _fontsize(n, panel)
    vmax = max(float(maps.max()), 1e-9)
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.axis("off")
            continue
        im = _heatmap(ax, maps[h], att.tokens, fontsize)
        im.set_clim(0, vmax)
        ax.set_title(f"head {h}", fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="attention weight")
    fig.suptitle(f"layer {layer}: {_title_text(att.text)}", fontsize=10)
    return _save(fig, path)


def plot_rollout(att: TextAttention, path: str | Path) -> Path:
    """Heat map of the attention rollout over all layers."""
    plt = _pyplot()
    n = len(att.tokens)
    side = _side(n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = _heatmap(ax, attention_rollout(att.maps), att.tokens, _fontsize(n, side))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="rolled-out attention")
    ax.set_title(f"attention rollout over {att.maps.shape[0]} layer(s)\n{_title_text(att.text)}", fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------- report


def _resolve(index: int, size: int, what: str) -> int:
    if not -size <= index < size:
        raise ValueError(f"{what} {index} is out of range: the model has {size} (0-based indices).")
    return index % size


def _head_pairs(layers: list[int], heads: Sequence, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """`heads` items are head indices (taken in every chosen layer) or explicit (layer, head) pairs."""
    pairs = []
    for h in heads:
        if isinstance(h, (tuple, list)):
            pairs.append((_resolve(int(h[0]), n_layers, "layer"), _resolve(int(h[1]), n_heads, "head")))
        else:
            pairs.extend((layer, _resolve(int(h), n_heads, "head")) for layer in layers)
    return list(dict.fromkeys(pairs))


def attention_report(
    net: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    out_dir: str | Path,
    layers: Sequence[int] | None = None,
    heads: Sequence[int | tuple[int, int]] | None = None,
    top_k: int = 5,
    max_length: int = 128,
    progress: bool | None = False,
) -> list[Path]:
    """Per text: a head grid per chosen layer (default all), one heat map per chosen (layer, head), and the
    rollout; plus attention.json (tokens, head-averaged first-token rows, top-k tokens, rollout row).
    Layer and head indices are 0-based. progress: a bar over the texts. Returns the written paths: none for
    a model without attention_maps."""
    if skip_without(net, HasAttentionMaps, "attention_maps(batch)", "Attention maps"):
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atts = collect_attentions(net, tokenizer, texts, max_length)
    n_layers, n_heads = atts[0].maps.shape[:2] if atts else (0, 0)
    chosen = [
        _resolve(int(x), n_layers, "layer")
        for x in (range(n_layers) if layers is None or not atts else layers)
    ]
    pairs = _head_pairs(chosen, heads or [], n_layers, n_heads) if atts else []
    paths: list[Path] = []
    records = []
    for i, att in bar(enumerate(atts), "Attention maps", progress, total=len(atts)):
        files = [plot_layer_grid(att, layer, out_dir / f"text{i}_layer{layer}_heads.png") for layer in chosen]
        files += [plot_head(att, lay, h, out_dir / f"text{i}_layer{lay}_head{h}.png") for lay, h in pairs]
        files.append(plot_rollout(att, out_dir / f"text{i}_rollout.png"))
        paths += files
        top = cls_top_tokens(att, top_k)
        records.append(
            {
                "index": i,
                "text": att.text,
                "tokens": att.tokens,
                "cls_attention": {str(layer): row.tolist() for layer, row in enumerate(cls_rows(att))},
                "top_tokens": {
                    **{str(layer): [[t, w] for t, w in top[layer]] for layer in range(n_layers)},
                    "rollout": [[t, w] for t, w in top[-1]],
                },
                "rollout_cls": attention_rollout(att.maps)[0].tolist(),
                "files": [p.name for p in files],
            }
        )
    summary = {
        "num_layers": int(n_layers),
        "num_heads": int(n_heads),
        "layers": chosen,
        "heads": [list(p) for p in pairs],
        "top_k": top_k,
        "note": "cls_attention[layer] is the first token's head-averaged attention row; rollout follows "
        "Abnar & Zuidema (2020). Attention weights are not explanations of the prediction.",
        "texts": records,
    }
    json_path = out_dir / "attention.json"
    json_path.write_text(json.dumps(summary, indent=2))
    return [*paths, json_path]
