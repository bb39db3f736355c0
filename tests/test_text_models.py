"""``hf_sequence_classifier`` (lpft.md §1.1): a tiny RoBERTa built locally, its φ and head, LP,
LoRA on query/value, export, and the NTK decomposition through torch.func on token inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _text_toys import save_model, save_model_and_tokenizer, sentiment_rows, transformers
from safetensors.torch import load_file, save_file
from test_analysis_ntk import _naive_grads

from unirobust.analysis.ntk import kernel_f, kernel_p, ntk_decomposition
from unirobust.build import set_trainable
from unirobust.data.tokens import pack
from unirobust.engine.checkpoint import export_model, load_model
from unirobust.errors import ConfigError
from unirobust.finetune.head import HeadInit, apply_head_init, head_of
from unirobust.finetune.lora import LoraSpec, plain_model, wrap_lora
from unirobust.models import build_model

L = 12
NAME = "hf_sequence_classifier"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_and_tokenizer(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="module")
def tokens(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    rows = sentiment_rows(24, 0)
    enc = tok(
        [r["sentence"] for r in rows],
        max_length=L,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    return pack(enc), torch.tensor([r["label"] for r in rows])


def _build(model_dir: Path, classes: int = 2, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        NAME, num_classes=classes, input_shape=(2, L), path=str(model_dir), **options
    )


def _reference(model_dir: Path) -> torch.nn.Module:
    """The checkpoint as transformers loads it by itself (2D mask, its default attention)."""
    return transformers.RobertaForSequenceClassification.from_pretrained(
        str(model_dir), local_files_only=True
    ).eval()


def test_phi_is_the_first_token_state_and_the_head_is_the_paper_s(model_dir: Path, tokens) -> None:
    x, _ = tokens
    model = _build(model_dir, classes=3).eval()
    ref = _reference(model_dir)
    assert model.backbone.pooler is None  # no pooler, no dense+tanh head (pitfall 5)
    ref_state = ref.roberta.state_dict()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name  # the pretrained weights, all of them
    mask = x[:, 1]
    assert bool((mask == 0).any())  # padding is present, so the mask matters
    with torch.no_grad():
        hidden = ref.roberta(input_ids=x[:, 0], attention_mask=mask).last_hidden_state
        phi = model.features(x)
        torch.testing.assert_close(phi, hidden[:, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), model.head(phi), rtol=0, atol=0)
    head = head_of(model)
    assert head is model.classifier and (head.in_features, head.out_features) == (16, 3)
    assert torch.equal(head.bias, torch.zeros(3))
    assert 0.005 < float(head.weight.detach().std()) < 0.05  # N(0, 0.02^2)
    assert model.dropout.p == ref.config.hidden_dropout_prob == 0.1
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout before the head (and in the backbone)

    last = _build(model_dir, pooling="last_token").eval()
    with torch.no_grad():
        rows = torch.arange(len(x))
        torch.testing.assert_close(
            last.features(x), hidden[rows, mask.sum(1) - 1], rtol=0, atol=1e-6
        )


def test_keep_native_head_uses_the_input_of_the_last_linear(model_dir: Path, tokens) -> None:
    x, _ = tokens
    model = _build(model_dir, keep_native_head=True).eval()
    ref = _reference(model_dir)
    assert model.head_name == "network.classifier.out_proj"
    assert head_of(model) is model.network.classifier.out_proj
    with torch.no_grad():
        logits = ref(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
        first = ref.roberta(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state[:, 0]
        phi = model.features(x)
        dense = ref.classifier.dense
        torch.testing.assert_close(phi, torch.tanh(dense(first)), rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.head(phi), logits, rtol=0, atol=1e-6)
    # the dotted head name serves `trainable: head` and peft's head copy alike
    assert set_trainable(model, "head", "train") == [
        "network.classifier.out_proj.weight",
        "network.classifier.out_proj.bias",
    ]
    wrapped = wrap_lora(model, LoraSpec(r=2))
    assert torch.equal(head_of(wrapped).weight, ref.classifier.out_proj.weight)


def test_loading_is_local_safetensors_only_and_complete(model_dir: Path, tmp_path: Path) -> None:
    def refused(path: Path, message: str, **options) -> None:
        with pytest.raises(ConfigError, match=message) as info:
            _build(path, **options)
        assert "\n" not in str(info.value)

    refused(tmp_path / "absent", "model directory .*absent' does not exist.*nothing is downloaded")
    pickled = tmp_path / "pickled"
    model = transformers.RobertaForSequenceClassification.from_pretrained(
        str(model_dir), local_files_only=True
    )
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # a pickle: never loaded
    refused(pickled, "cannot load .*model.safetensors .*never read")
    partial = save_model(tmp_path / "partial")
    weights = load_file(str(partial / "model.safetensors"))
    dropped = [k for k in weights if "layer.1." in k]
    save_file({k: v for k, v in weights.items() if k not in dropped}, partial / "model.safetensors")
    refused(partial, f"lacks {len(dropped)} backbone weight.*start at random values")
    refused(model_dir, "normalize applies to image models", normalize=True)
    with pytest.raises(ConfigError, match="head_name"):
        _build(model_dir, head_name="backbone")
    with pytest.raises(ConfigError, match="token input_shape"):
        build_model(NAME, num_classes=2, input_shape=(1, 28, 28), path=str(model_dir))


def test_lp_changes_only_the_head(model_dir: Path, tokens) -> None:
    x, y = tokens
    model = _build(model_dir)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.classifier.weight.detach().clone()
    apply_head_init(model, HeadInit(mode="logreg", cs=3, folds=2), x, y, seed=0)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # oracle 10, bit for bit
    assert not torch.equal(model.classifier.weight, head_before)
    w = model.classifier.weight.detach()
    torch.testing.assert_close(w[0], -w[1], rtol=0, atol=0)  # the binary split of §1.2


def test_lora_on_query_and_value_keeps_every_base_weight(model_dir: Path, tokens) -> None:
    x, y = tokens
    model = _build(model_dir)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = wrap_lora(model, LoraSpec(r=2))
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    lora = [n for n in trainable if "lora_" in n]
    assert len(lora) == 2 * 2 * 2  # 2 layers x {query, value} x {A, B}
    assert all(".query." in n or ".value." in n for n in lora)
    assert sum(p.numel() for p in trainable.values()) == 8 * 2 * 16 + 2 * 16 + 2
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.0)
    wrapped.train()
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(wrapped(x), y).backward()
        optimizer.step()
    state = wrapped.get_base_model().state_dict()
    for name, tensor in base.items():
        key = name
        if ".query." in name or ".value." in name:
            key = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        if name.startswith("classifier."):
            key = name.replace("classifier.", "classifier.original_module.")
        assert torch.equal(state[key], tensor), name
    assert any(bool(p.abs().sum() > 0) for n, p in trainable.items() if "lora_B" in n)
    merged = plain_model(wrapped).eval()
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), wrapped(x), rtol=0, atol=1e-5)
    assert not torch.equal(
        merged.backbone.encoder.layer[0].attention.self.query.weight,
        base["backbone.encoder.layer.0.attention.self.query.weight"],
    )


def test_export_and_load_give_the_same_logits(model_dir: Path, tokens, tmp_path: Path) -> None:
    x, _ = tokens
    model = _build(model_dir).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)
    meta = {
        "model": {"name": NAME, "options": {"path": str(model_dir)}},
        "num_classes": 2,
        "input_shape": [2, L],
    }
    export_model(tmp_path / "m.safetensors", model, meta)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_ntk_of_the_text_model_is_p_plus_f(model_dir: Path, tokens, attention: str) -> None:
    # token ids are inputs, never differentiated: θ are the parameters, so vmap over ids works
    x = tokens[0][:4]
    model = _build(model_dir, attention=attention).double().eval()
    f_jac = kernel_f(model, x, mode="jacobian")
    f_vjp = kernel_f(model, x, mode="vjp_jvp")  # forward-mode AD: eager attention meanwhile
    assert model.backbone.config._attn_implementation == attention  # restored
    torch.testing.assert_close(f_jac, f_vjp, rtol=0, atol=1e-10)
    names = {n for n, _ in model.named_parameters()}
    jac = _naive_grads(model, x, lambda m, xi: m(xi), names)
    full = torch.einsum("ncp,mdp->ncmd", jac, jac)
    with torch.no_grad():
        phi = model.features(x)
    assert float(f_jac.abs().max()) > 1e-6
    torch.testing.assert_close(full, kernel_p(phi, phi, 2) + f_jac, rtol=0, atol=1e-10)
    result = ntk_decomposition(model, tokens[0], tokens[1], mode="jacobian", n_max=6, seed=0)
    assert result.report["n_train"] == 6 and result.report["F"]["rank"] >= 1
    assert result.f_train.dtype == torch.float64
