"""A pretrained Hugging Face encoder with a sequence-classification head, as a batch -> logits module."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerBase,
)

from encoderlab.errors import EncoderlabError

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "ENCODERLAB_MODEL_DIR"


def resolve_source(name_or_path: str) -> str:
    """Where `from_pretrained` should load a Hub id from: `$ENCODERLAB_MODEL_DIR/<id>` when that offline
    mirror holds it (e.g. <dir>/sentence-transformers/all-MiniLM-L6-v2), else the id or path unchanged.
    Configs keep the Hub id, so runs stay comparable with and without the mirror."""
    import os

    root = os.environ.get(MODEL_DIR_ENV)
    if not root or Path(name_or_path).expanduser().exists():
        return name_or_path
    mirrored = Path(root).expanduser() / name_or_path
    return (
        str(mirrored)
        if (mirrored / "config.json").is_file() or (mirrored / "tokenizer_config.json").is_file()
        else name_or_path
    )


# config attributes that hold dropout probabilities, across BERT / RoBERTa / DistilBERT / ELECTRA / DeBERTa
_DROPOUT_ATTRS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
    "classifier_dropout",
)
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_error(what: str, name_or_path: str, ex: Exception) -> EncoderlabError:
    local = Path(name_or_path).expanduser()
    reason = " ".join(str(ex).split())[:400]
    if local.exists() or name_or_path.startswith((".", "/", "~")):
        where = f"the local directory {local} " + (
            "does not exist" if not local.exists() else "is not a readable save_pretrained directory"
        )
    else:
        where = f"'{name_or_path}' could not be fetched from the Hugging Face Hub (offline? pass a local directory)"
    return EncoderlabError(
        f"Could not load the {what} from model.name_or_path={name_or_path!r}: {where}. "
        f"It must be a Hub model id or a directory made by save_pretrained (config.json, weights, tokenizer files). "
        f"Reason: {type(ex).__name__}: {reason}"
    )


CPU_EAGER_MAX_TOKENS = 256  # longer CPU training steps use SDPA


class HFEncoderClassifier(nn.Module):
    """`AutoModelForSequenceClassification` with label names, dropout override, freezing and
    gradient checkpointing. forward(batch) returns logits (batch, num_labels)."""

    def __init__(
        self,
        name_or_path: str,
        num_labels: int,
        id2label: dict[int, str] | None = None,
        tokenizer_name_or_path: str | None = None,
        revision: str | None = None,
        dropout: float | None = None,
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = "auto",
        trust_remote_code: bool = False,
        tokenizer: PreTrainedTokenizerBase | None = None,  # the checkpoint's own: nothing to size from it
        peft: str | None = None,
        lora: dict | None = None,
    ) -> None:
        super().__init__()
        id2label = {int(k): v for k, v in (id2label or {i: str(i) for i in range(num_labels)}).items()}
        name_or_path = resolve_source(name_or_path)
        try:
            config = AutoConfig.from_pretrained(
                name_or_path,
                num_labels=num_labels,
                id2label=id2label,
                label2id={v: k for k, v in id2label.items()},
                revision=revision,
                trust_remote_code=trust_remote_code,
            )
            if dropout is not None:
                for attr in _DROPOUT_ATTRS:
                    if hasattr(config, attr):
                        setattr(config, attr, dropout)
            explicit = attn_implementation not in (None, "auto")
            kwargs = {"attn_implementation": attn_implementation} if explicit else {}
            self.hf_model, loading_info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path,
                config=config,
                revision=revision,
                trust_remote_code=trust_remote_code,
                ignore_mismatched_sizes=True,  # a checkpoint fine-tuned with another label set gets a new head
                output_loading_info=True,
                **kwargs,
            )
        except (OSError, ValueError) as ex:
            raise load_error("model", name_or_path, ex) from ex
        self.hf_model.train()  # from_pretrained returns eval mode, and Lightning keeps submodule modes
        # auto: the library's default (SDPA), except for CPU training steps on short batches, see forward
        loaded = getattr(self.hf_model.config, "_attn_implementation", None)
        self._auto_attention = attn_implementation == "auto" and loaded == "sdpa"
        self._attention = loaded
        self._cpu_train_attention = "eager"  # models/dropout.py's ATTENTION once use_fast_dropout() ran
        self._freeze(freeze_embeddings, freeze_layers)
        if gradient_checkpointing:
            if hasattr(self.hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                self.hf_model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.hf_model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        self.peft = peft
        if peft == "lora":  # wraps the model as loaded, frozen layers and checkpointing set
            from encoderlab.models.lora import apply_lora, new_modules

            self.hf_model = apply_lora(self.hf_model, lora or {}, new_modules(loading_info))
        elif peft is not None:
            raise EncoderlabError(
                f"model.peft={peft!r} is not a PEFT method encoderlab knows: use null or lora."
            )

    def _encoder_layers(self) -> nn.ModuleList | None:
        n = getattr(self.hf_model.config, "num_hidden_layers", None) or getattr(
            self.hf_model.config, "n_layers", None
        )
        for module in self.hf_model.base_model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        return None

    def _freeze(self, embeddings: bool, n_layers: int) -> None:
        base = self.hf_model.base_model
        if embeddings:
            for p in base.get_input_embeddings().parameters():
                p.requires_grad = False
            if hasattr(base, "embeddings"):
                for p in base.embeddings.parameters():
                    p.requires_grad = False
        if n_layers > 0:
            layers = self._encoder_layers()
            if layers is None:
                raise EncoderlabError(
                    f"model.freeze_layers={n_layers}: could not find the encoder layers of {type(base).__name__}."
                )
            if n_layers > len(layers):
                raise EncoderlabError(
                    f"model.freeze_layers={n_layers}, but the encoder has {len(layers)} layers."
                )
            for layer in layers[:n_layers]:
                for p in layer.parameters():
                    p.requires_grad = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
        if self._auto_attention:
            self._use_attention(self._attention_for(inputs["input_ids"]))
        return self.hf_model(**inputs).logits  # (B, num_labels)

    def _attention_for(self, ids: torch.Tensor) -> str:
        """SDPA, except eager for a CPU training step of at most CPU_EAGER_MAX_TOKENS tokens: torch's CPU
        flash-attention backward is slow on short sequences."""
        train_on_cpu = self.training and ids.device.type == "cpu" and torch.is_grad_enabled()
        return self._cpu_train_attention if train_on_cpu and ids.size(1) <= CPU_EAGER_MAX_TOKENS else "sdpa"

    def use_fast_dropout(self) -> int:
        """models/dropout.py's CPU dropout: the model's nn.Dropout modules swapped, and the eager attention
        of CPU training steps (attn_implementation=auto) with it. Returns the modules swapped."""
        from encoderlab.models.dropout import ATTENTION, register_attention, use_fast_dropout

        register_attention()
        self._cpu_train_attention = ATTENTION
        return use_fast_dropout(self.hf_model)

    def _use_attention(self, impl: str) -> None:
        if impl != self._attention:  # switching only swaps a function, no weights move
            self.hf_model.set_attn_implementation(impl)
            self._attention = impl

    # ---- the optional model interface (encoderlab/models/capabilities.py)
    input_keys = _MODEL_INPUTS

    def attention_maps(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer attention weights, each (B, H, T, T)."""
        inputs = {k: batch[k] for k in _MODEL_INPUTS if k in batch}
        with self._eager_attention():
            maps = self.hf_model(**inputs, output_attentions=True).attentions
        if not maps or any(m is None for m in maps):
            raise ValueError(f"{type(self.hf_model).__name__} returned no attention weights.")
        return list(maps)

    def input_embeddings(self) -> nn.Module:
        return self.hf_model.get_input_embeddings()

    @contextmanager
    def _eager_attention(self) -> Iterator[None]:
        """SDPA / flash attention cannot return weights: eager for the call, then the previous one back."""
        previous = getattr(self.hf_model.config, "_attn_implementation", None)
        if previous in (None, "eager"):
            yield
            return

        def switch(impl: str) -> None:
            if hasattr(self.hf_model, "set_attn_implementation"):  # transformers >= 4.48
                self.hf_model.set_attn_implementation(impl)
            else:
                self.hf_model.config._attn_implementation = impl

        switch("eager")
        try:
            yield
        finally:
            switch(previous)

    def plain_model(self) -> nn.Module:
        """The transformers model to export: `hf_model`, or with LoRA a merged copy of it (no peft needed
        to load it)."""
        from encoderlab.models.lora import merged

        return merged(self.hf_model)

    def save_pretrained(
        self,
        directory: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        plain: nn.Module | None = None,
    ) -> None:
        """A directory that `from_pretrained` and `transformers.pipeline` load (LoRA adapters merged).
        `plain`: plain_model() when the caller already made it (with LoRA, merging copies the weights)."""
        (plain if plain is not None else self.plain_model()).save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
