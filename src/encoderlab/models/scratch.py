"""A transformer encoder for sequence classification, trained from scratch.

Token embedding + positions (sinusoidal | learned) -> N encoder blocks (pre-LN by default, post-LN as an
option; residual connections around attention and MLP) -> final LayerNorm -> pooling (cls | mean | max,
all mask-aware) -> classifier. Attention goes through F.scaled_dot_product_attention with a boolean
key-padding mask, so padding gets exactly zero weight. Shapes: B batch, T tokens, C d_model, H heads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from encoderlab.config import ALLOWED_VALUES, ScratchModelConfig
from encoderlab.errors import ConfigError, heads_error


@dataclass
class ScratchConfig(ScratchModelConfig):
    """The schema's architecture keys (encoderlab.config.ScratchModelConfig) plus what the data decides."""

    vocab_size: int = 8000
    pad_token_id: int = 0
    num_labels: int = 2

    def __post_init__(self) -> None:
        if self.n_heads < 1 or self.d_model % self.n_heads != 0:
            raise heads_error(self.d_model, self.n_heads)
        for key, allowed in ALLOWED_VALUES.items():  # the values the config check allows
            name = key.removeprefix("model.")
            if key.startswith("model.") and getattr(self, name) not in allowed:
                raise ConfigError(
                    f"Config error: bad value for '{key}': {getattr(self, name)!r}. Allowed: {', '.join(allowed)}."
                )


def sinusoidal_table(max_positions: int, d_model: int) -> torch.Tensor:
    """(max_positions, C) fixed sin/cos positions of 'Attention Is All You Need'."""
    pos = torch.arange(max_positions).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (C/2,)
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table


CPU_EAGER_MAX_TOKENS = 1024  # longer CPU training steps use SDPA (eager holds B*H*T*T scores in memory)


class SelfAttention(nn.Module):
    """Multi-head self-attention. SDPA by default; eager softmax(QK^T/sqrt(d))V when the maps are asked
    for, and (attn_implementation=auto) for CPU training steps: torch's CPU flash-attention backward is
    slow on short sequences."""

    def __init__(self, cfg: ScratchConfig) -> None:
        super().__init__()
        self.attn_implementation = cfg.attn_implementation
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.attn_drop = nn.Dropout(cfg.dropout)  # the eager path's; a module, so fast_dropout swaps it

    def _eager(self, x: torch.Tensor) -> bool:
        if self.attn_implementation != "auto":
            return self.attn_implementation == "eager"
        cpu_step = self.training and x.device.type == "cpu" and torch.is_grad_enabled()
        return cpu_step and x.size(1) <= CPU_EAGER_MAX_TOKENS

    def forward(self, x: torch.Tensor, keep: torch.Tensor, need_weights: bool = False):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (
            t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, H, T, C/H)
        mask = keep[:, None, None, :]  # (B, 1, 1, T): True where the key is a real token
        weights = None
        if need_weights or self._eager(x):  # same math as SDPA
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = self.attn_drop(weights) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y), weights if need_weights else None


class MLP(nn.Module):
    def __init__(self, cfg: ScratchConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))  # (B, T, C)


class Block(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x))  (pre-LN)   or   norm(x + attn(x)); norm(x + mlp(x))  (post-LN)."""

    def __init__(self, cfg: ScratchConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, need_weights: bool = False):
        if self.pre:
            a, w = self.attn(self.ln1(x), keep, need_weights)
            x = x + self.drop(a)
            x = x + self.mlp(self.ln2(x))
        else:
            a, w = self.attn(x, keep, need_weights)
            x = self.ln1(x + self.drop(a))
            x = self.ln2(x + self.mlp(x))
        return x, w  # (B, T, C), (B, H, T, T) or None


class ScratchEncoder(nn.Module):
    """forward(batch) -> logits (B, num_labels); with return_attentions=True also a list of per-layer
    attention maps, each (B, H, T, T). Built from a ScratchConfig, or from keyword arguments (Hydra's
    `_target_`), where `tokenizer` sets vocab_size and pad_token_id."""

    def __init__(
        self,
        cfg: ScratchConfig | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        id2label: dict[int, str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if cfg is None:
            if tokenizer is not None:
                kwargs.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
            cfg = ScratchConfig(**kwargs)
        self.cfg = cfg
        self.id2label = {
            int(k): v for k, v in (id2label or {i: str(i) for i in range(cfg.num_labels)}).items()
        }
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model)
        else:
            table = sinusoidal_table(cfg.max_positions, cfg.d_model)
            self.register_buffer("pos_table", table, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.num_labels)
        self.apply(self._init_weights)
        # Fixed sin/cos positions have unit amplitude, so tokens use Vaswani et al.'s scale: init
        # N(0, 1/C) times sqrt(C), i.e. unit-variance token vectors. With BERT's 0.02 init they would be
        # ~35x smaller than the positions and barely move the first LayerNorm: training crawls.
        scaled = cfg.positions == "sinusoidal" and cfg.scale_embeddings
        self.emb_scale = math.sqrt(cfg.d_model) if scaled else 1.0
        if scaled:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.d_model**-0.5)
            self.tok_emb.weight.data[cfg.pad_token_id].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's init: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- the optional model interface (encoderlab/models/capabilities.py)
    input_keys = ("input_ids", "attention_mask")

    @property
    def max_positions(self) -> int:
        return self.cfg.max_positions

    def attention_maps(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer attention weights, each (B, H, T, T)."""
        return self(batch, return_attentions=True)[1]

    def input_embeddings(self) -> nn.Module:
        return self.tok_emb

    def forward(self, batch: dict[str, torch.Tensor], return_attentions: bool = False):
        ids = batch["input_ids"]  # (B, T)
        B, T = ids.shape
        if ids.size(1) > self.cfg.max_positions:
            raise ValueError(f"sequence length {T} exceeds model.max_positions={self.cfg.max_positions}")
        keep = (
            batch["attention_mask"].bool() if "attention_mask" in batch else ids != self.cfg.pad_token_id
        )  # (B, T)
        pos = self.pos_emb.weight[:T] if self.cfg.positions == "learned" else self.pos_table[:T]  # (T, C)
        x = self.drop(self.tok_emb(ids) * self.emb_scale + pos)  # (B, T, C)
        maps = []
        for block in self.blocks:
            x, w = block(x, keep, return_attentions)
            maps.append(w)
        x = self.ln_f(x)  # (B, T, C)
        pooled = self._pool(x, keep)  # (B, C)
        logits = self.head(self.drop(pooled))  # (B, num_labels)
        return (logits, maps) if return_attentions else logits

    def save_pretrained(
        self, directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> None:
        """config.json + model.safetensors (+ the tokenizer): reloads with ScratchEncoder.from_pretrained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in asdict(self.cfg).items() if k != "_target_"}
        config = {"model_type": "encoderlab_scratch", **fields, "id2label": self.id2label}
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            str(directory / "model.safetensors"),
        )
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ScratchEncoder:
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        config.pop("model_type", None)
        id2label = config.pop("id2label", None)
        model = cls(ScratchConfig(**config), id2label=id2label)
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval()

    def _pool(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return x[:, 0]
        m = keep.unsqueeze(-1)  # (B, T, 1)
        if self.cfg.pooling == "max":
            return x.masked_fill(~m, float("-inf")).max(dim=1).values
        return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # mask-aware mean
