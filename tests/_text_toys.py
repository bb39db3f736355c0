"""A tiny RoBERTa-like model, its word-level tokenizer and small sentiment files, built locally.

Nothing is downloaded: the tokenizer is a ``tokenizers`` WordLevel model wrapped as a
``PreTrainedTokenizerFast``, the model a randomly initialised ``RobertaForSequenceClassification``
(hidden 16, 2 layers, 2 heads), both written with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "boring", "dull"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "was", "is", "very", "quite"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL


def save_tokenizer(folder: Path) -> Path:
    """A RoBERTa-style word-level tokenizer (``<s> A </s></s> B </s>``) in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=32,
    )
    fast.save_pretrained(folder)
    return folder


def save_model(folder: Path, seed: int = 0, num_labels: int = 2) -> Path:
    """A tiny randomly initialised RoBERTa sequence classifier in ``folder`` (safetensors)."""
    import torch

    config = transformers.RobertaConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = transformers.RobertaForSequenceClassification(config)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def save_model_and_tokenizer(folder: Path, seed: int = 0) -> Path:
    """Model and tokenizer in one directory, as a Hugging Face checkpoint usually is."""
    save_model(folder, seed)
    return save_tokenizer(folder)


def sentiment_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` short sentences whose label (1 = positive) is the polarity of their adjective."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(1, 4))] + [word]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def text_recipe(model_dir: Path, data_dir: Path, **sections: Any) -> dict[str, Any]:
    """A two-stage LP-FT recipe on the tiny model (LP: logreg probe, then FT of everything)."""
    ft_lr = {"kind": "piecewise_linear", "knot_fractions": [0, 1], "values": [1e-3, 0.0]}
    recipe: dict[str, Any] = {
        "name": "text-lpft",
        "seed": 1,
        "data": {
            "name": "text",
            "data_dir": str(data_dir),
            "options": {"tokenizer": str(model_dir), "text": "sentence", "max_length": 12},
            "val_size": 16,
            "batch_size": 8,
        },
        "model": {"name": "hf_sequence_classifier", "options": {"path": str(model_dir)}},
        "train": {
            "grad_clip": 1.0,
            "stages": [
                {
                    "name": "lp",
                    "epochs": 1,
                    "trainable": "head",
                    "head_init": {"mode": "logreg", "cs": 3, "folds": 2},
                    "experts": [
                        {
                            "name": "lp",
                            "objective": {"name": "natural"},
                            "optimizer": {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0},
                            "lr_schedule": {"kind": "constant", "value": 0.0},
                        }
                    ],
                },
                {
                    "name": "ft",
                    "epochs": 2,
                    "experts": [
                        {
                            "name": "ft",
                            "objective": {"name": "natural"},
                            "optimizer": {"name": "adamw", "weight_decay": 0.0},
                            "lr_schedule": {**ft_lr, "granularity": "iteration"},
                        }
                    ],
                },
            ],
        },
        "validation": {
            "select": "clean",
            "diagnostics": ["head_norm", "feature_change", "feature_cosine", "calibration"],
        },
        "eval": {"n": 24, "checkpoints": ["best", "last"]},
    }
    recipe.update(sections)
    return recipe
