"""Hugging Face text classifiers with the library's feature/head interface (lpft.md §1.1).

``hf_sequence_classifier`` loads a pretrained ``transformers`` model from a local directory
(``local_files_only``, safetensors only: no pickle is ever read) and exposes what linear probing,
LoRA, the diagnostics and the NTK use on every model: ``features(x)`` = φ, a linear ``head`` named
by ``head_name``, and ``forward(x)`` = logits, for packed token batches
(:mod:`unirobust.data.tokens`). The number of classes comes from the data.

What counts as φ and the head (lpft.md §1.1, pitfalls 3 and 5):

* default (the paper): the base model (``AutoModel``; a sequence-classification checkpoint's
  base model is reused, its head dropped; no pooler) with the paper's head
  ``Linear(hidden, C)`` after ``Dropout(hidden_dropout_prob)``. φ is the last layer's hidden
  state of the first token (``pooling: first_token``; ``last_token``, the last non-padding
  token, is for decoders). RoBERTa's stock dense+tanh head is *not* used: it would silently
  change φ. The head starts at N(0, 0.02²) weights and zero bias.
* ``keep_native_head: true`` (not the paper's): ``AutoModelForSequenceClassification`` with its
  stock head; the head is the Linear that outputs the logits and φ is that Linear's input (for
  RoBERTa the output of dense+tanh).

``pooling`` also tells the attention: ``first_token`` means a bidirectional encoder, which is
given a ready 4D additive mask, so its forward has no data-dependent branch and ``torch.func``
can vmap over inputs (the NTK); ``last_token`` leaves the 2D mask to the model, which builds its
causal mask (the NTK is then unsupported). ``attention: eager`` (default) matches the paper's
era; ``sdpa`` is faster but lacks forward-mode AD, so :meth:`TextClassifier.functorch_mode`
switches to eager while the NTK runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from unirobust.data.tokens import unpack
from unirobust.errors import ConfigError
from unirobust.hf import first_line, local_dir, quiet, transformers_module
from unirobust.models.registry import MODELS, ModelSpec

__all__ = ["HFSequenceClassifierSpec", "TextClassifier", "load_pretrained"]

Pooling = Literal["first_token", "last_token"]


class HFSequenceClassifierSpec(ModelSpec):
    """Options of ``hf_sequence_classifier`` (see the module docstring)."""

    inputs: ClassVar[Literal["images", "tokens"]] = "tokens"
    name: Literal["hf_sequence_classifier"] = "hf_sequence_classifier"
    path: str
    pooling: Pooling = "first_token"
    dropout: float | None = Field(None, ge=0, lt=1)
    head_name: str = "classifier"
    keep_native_head: bool = False
    attention: Literal["eager", "sdpa"] = "eager"

    @field_validator("head_name")
    @classmethod
    def _head_name(cls, value: str) -> str:
        taken = {"backbone", "dropout", "head", "features", "pooling", "network"}
        if not value.isidentifier() or value in taken or hasattr(nn.Module, value):
            raise ValueError(f"head_name must be a new attribute name, not {value!r}")
        return value


def load_pretrained(path: str, *, classifier: bool, num_labels: int, attention: str) -> nn.Module:
    """The base (or sequence-classification) model in ``path``; its weights must all be there.

    Only ``model.safetensors`` weights are read (``use_safetensors=True``). A missing weight other
    than a pooler's (which is dropped) or the new head's is an error: training would silently
    start from a random backbone.
    """
    transformers = transformers_module()
    folder = local_dir(path, "model")
    auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
    extra: dict[str, Any] = (
        {"num_labels": num_labels, "ignore_mismatched_sizes": True} if classifier else {}
    )
    try:
        with quiet():
            model, info = auto.from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=True,
                attn_implementation=attention,
                output_loading_info=True,
                **extra,
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(
            f"cannot load a transformers model from '{path}' ({first_line(err)}); it needs "
            "config.json and model.safetensors (.bin pickles are never read)"
        ) from None
    fresh = set(info.get("missing_keys", ())) | {key for key, *_ in info.get("mismatched_keys", ())}
    base = f"{model.base_model_prefix}." if classifier else ""
    # the stock head of a classifier is new by design; a pooler is dropped or stays unused
    lost = sorted(
        k for k in fresh if k.startswith(base) and not k[len(base) :].startswith("pooler.")
    )
    if lost:
        raise ConfigError(
            f"'{path}' lacks {len(lost)} backbone weight(s) (first: {lost[0]}); they would start "
            "at random values"
        )
    return model


class _HeadByName(nn.Module):
    """The linear head found by its dotted module name (``head_name``), and its input width."""

    head_name: str

    @property
    def head(self) -> nn.Linear:
        return self.get_submodule(self.head_name)  # type: ignore[return-value]

    @property
    def num_features(self) -> int:
        return self.head.in_features


class TextClassifier(_HeadByName):
    """``forward(x) = head(dropout(features(x)))`` on packed tokens (the paper's head)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        pooling: Pooling = "first_token",
        dropout: float = 0.1,
        head_name: str = "classifier",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.num_classes = int(num_classes)
        self.head_name = head_name
        self.dropout = nn.Dropout(dropout)
        head = nn.Linear(int(backbone.config.hidden_size), self.num_classes)
        nn.init.normal_(head.weight, std=0.02)  # lpft.md §1.1
        nn.init.zeros_(head.bias)
        setattr(self, head_name, head)

    def features(self, x: Tensor) -> Tensor:
        """φ: the last hidden state at the first (or last non-padding) token."""
        hidden = self.backbone(**hf_inputs(self.backbone, x, self.pooling)).last_hidden_state
        if self.pooling == "first_token":
            return hidden[:, 0]
        mask = unpack(x)["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(1)  # the last kept position, for either padding side
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))

    def functorch_mode(self) -> contextlib.AbstractContextManager[None]:
        return eager_attention(self.backbone)


class NativeHeadClassifier(_HeadByName):
    """A sequence classifier with its stock head; φ is the input of the head's last Linear."""

    def __init__(self, network: nn.Module, num_classes: int, pooling: Pooling) -> None:
        super().__init__()
        self.network = network
        self.pooling = pooling
        self.num_classes = int(num_classes)
        linears = [
            name
            for name, m in network.named_modules()
            if isinstance(m, nn.Linear) and m.out_features == self.num_classes
        ]
        if not linears:
            raise ConfigError(f"{type(network).__name__} has no Linear with {num_classes} outputs")
        self.head_name = f"network.{linears[-1]}"

    def features(self, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            self.network(**hf_inputs(self.network, x, self.pooling))
        finally:
            hook.remove()
        phi = captured[-1]
        if phi.ndim != 2:  # e.g. GPT-2's score layer runs on every position, then pools
            raise ConfigError(
                f"keep_native_head: the stock head of {type(self.network).__name__} sees "
                f"{tuple(phi.shape)}, not one vector per example; use the paper's head instead"
            )
        return phi

    def forward(self, x: Tensor) -> Tensor:
        return self.network(**hf_inputs(self.network, x, self.pooling)).logits

    def functorch_mode(self) -> contextlib.AbstractContextManager[None]:
        return eager_attention(self.network)


def hf_inputs(model: nn.Module, x: Tensor, pooling: Pooling) -> dict[str, Tensor]:
    """Unpacked tokens; for an encoder the 2D mask becomes a 4D additive one (module docstring)."""
    inputs = unpack(x)
    if pooling == "first_token":
        dtype = model.get_input_embeddings().weight.dtype
        keep = inputs["attention_mask"][:, None, None, :].to(dtype)
        inputs["attention_mask"] = (1.0 - keep) * torch.finfo(dtype).min
    else:
        inputs["use_cache"] = False  # type: ignore[assignment]
    return inputs


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Eager attention inside the block (torch.func's forward-mode AD lacks SDPA rules)."""
    config = model.config
    before = config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


@MODELS.register("hf_sequence_classifier", HFSequenceClassifierSpec)
def build_hf_sequence_classifier(
    spec: HFSequenceClassifierSpec, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """Hugging Face text model from a local directory, the paper's linear head (text extra)."""
    if spec.normalize:
        raise ConfigError("normalize applies to image models; hf_sequence_classifier reads tokens")
    if spec.keep_native_head:
        network = load_pretrained(
            spec.path, classifier=True, num_labels=num_classes, attention=spec.attention
        )
        return NativeHeadClassifier(network, num_classes, spec.pooling)
    backbone = load_pretrained(spec.path, classifier=False, num_labels=0, attention=spec.attention)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # the paper's head reads the first token's hidden state directly
    config = backbone.config
    dropout = spec.dropout
    if dropout is None:
        dropout = float(getattr(config, "hidden_dropout_prob", 0.1))
    return TextClassifier(
        backbone, num_classes, pooling=spec.pooling, dropout=dropout, head_name=spec.head_name
    )
