"""Tests for summon.models (layer-by-layer backbone, heads, builders, n-gram model) and summon.losses.

Only the tiny random encoders are used: no pretrained weights are loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytest
import torch
from transformers import AutoModel, BertForSequenceClassification, GPT2Config, GPT2Model

from summon.data.features import collate
from summon.losses import IGNORE_INDEX, cross_entropy, kd_kl, mix
from summon.models import (
    TINY_MODELS,
    Backbone,
    ModelConfig,
    NgramClassifier,
    SequenceHead,
    build_model,
    keep_layers,
    layer_selection,
    model_from_architecture,
    pool,
    tiny_encoder,
)
from summon.models.backbone import FAMILIES
from summon.models.build import Source

# Three texts of different lengths; the last is the longest, so dropping it lets select() trim padding.
TEXTS = ["the movie was great fun", "bad", "the stock market won a new election this year , really"]
ATOL = 1e-5


def _encoder(name: str, impl: str | None = None) -> tuple[torch.nn.Module, object]:
    """A tiny encoder (seed 0), rebuilt with attention implementation ``impl`` when one is given.

    Shared between tests (cached): tests must not modify it.
    """
    model, _ = _cached_encoder(name, None)
    if impl == "sdpa" and not getattr(type(model), "_supports_sdpa", False):
        pytest.skip(f"{type(model).__name__} has no SDPA attention in this transformers version")
    return _cached_encoder(name, impl)


@functools.cache
def _cached_encoder(name: str, impl: str | None) -> tuple[torch.nn.Module, object]:
    model, tokenizer = tiny_encoder(name)
    if impl is None or model.config._attn_implementation == impl:
        return model, tokenizer
    other = AutoModel.from_config(copy.deepcopy(model.config), attn_implementation=impl)
    other.load_state_dict(model.state_dict())
    return other.eval(), tokenizer


def _batch(tokenizer, model, texts=TEXTS) -> dict[str, torch.Tensor]:
    """A right-padded batch; BERT also gets non-zero token types so the segment embeddings are exercised."""
    inputs = dict(tokenizer(list(texts), padding=True, return_tensors="pt"))
    if model.config.model_type not in ("bert", "roberta"):
        inputs.pop("token_type_ids", None)  # MPNet and DistilBERT have no segment embeddings
    if model.config.model_type == "bert":
        types = torch.zeros_like(inputs["input_ids"])
        types[:, 3:] = 1
        inputs["token_type_ids"] = types * inputs["attention_mask"]
    return inputs


@functools.cache
def _four_layer(name: str) -> tuple[torch.nn.Module, object]:
    """A 4-layer tiny encoder, shared between tests (cached): tests must not modify it."""
    model, tokenizer = tiny_encoder(name)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    return AutoModel.from_config(config).eval(), tokenizer


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# --- Backbone parity with the Hugging Face forward ----------------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_backbone_last_layer_matches_hf_forward(name, impl):
    model, tokenizer = _encoder(name, impl)
    assert model.config._attn_implementation == impl
    inputs = _batch(tokenizer, model)
    real = inputs["attention_mask"].bool()
    assert real.sum(dim=1).unique().numel() == 3  # three different lengths, so padding matters
    with torch.no_grad():
        ours = Backbone(model)(**inputs)
        expected = model(**inputs).last_hidden_state
    assert len(ours) == 2
    _close(ours[-1][real], expected[real])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_backbone_every_layer_matches_hf_hidden_states(name, impl):
    model, tokenizer = _encoder(name, impl)
    inputs = _batch(tokenizer, model)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True).hidden_states
        if expected is None:
            pytest.skip(f"{type(model).__name__} does not return hidden states")
        ours = Backbone(model)(**inputs, layers=[0, 1, 2])
    assert len(expected) == 3
    for k in range(3):
        _close(ours[k][real], expected[k][real])


def test_eager_and_sdpa_backbones_agree():
    eager, tokenizer = _encoder("tiny-bert", "eager")
    sdpa, _ = _encoder("tiny-bert", "sdpa")
    inputs = _batch(tokenizer, eager)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        _close(Backbone(eager)(**inputs)[-1][real], Backbone(sdpa)(**inputs)[-1][real])


# --- running only some layers -------------------------------------------------------------------------


def test_forward_stops_after_the_deepest_requested_layer():
    model, tokenizer = _encoder("tiny-bert")
    backbone = Backbone(model)
    calls = [0, 0]
    handles = [layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, layer in enumerate(backbone.layers)]
    inputs = _batch(tokenizer, model)
    try:
        with torch.no_grad():
            (first,) = backbone(**inputs, layers=[1])
            assert calls == [1, 0]
            full = backbone(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [2, 1]
    _close(first, full[0])


def test_forward_returns_layers_in_requested_order():
    model, tokenizer = _encoder("tiny-bert")
    inputs = _batch(tokenizer, model)
    with torch.no_grad():
        two, zero, one = Backbone(model)(**inputs, layers=[2, 0, 1])
        every = Backbone(model)(**inputs, layers=[0, 1, 2])
    for got, want in zip((zero, one, two), every, strict=True):
        _close(got, want)


@pytest.mark.parametrize("layers", [[3], [-1], [1, 5]])
def test_forward_rejects_layers_out_of_range(layers):
    model, tokenizer = _encoder("tiny-bert")
    with pytest.raises(ValueError, match="out of range"):
        Backbone(model)(**_batch(tokenizer, model), layers=layers)


def test_step_past_the_last_layer_raises():
    model, tokenizer = _encoder("tiny-bert")
    backbone = Backbone(model)
    inputs = _batch(tokenizer, model)
    with torch.no_grad():
        state = backbone.step(backbone.step(backbone.start(**inputs)))
    with pytest.raises(ValueError, match="already run"):
        backbone.step(state)


def test_step_leaves_its_input_state_unchanged():
    model, tokenizer = _encoder("tiny-bert")
    backbone = Backbone(model)
    with torch.no_grad():
        state = backbone.start(**_batch(tokenizer, model))
        before = state.hidden.clone()
        after = backbone.step(state)
    assert state.layer == 0 and after.layer == 1
    assert torch.equal(state.hidden, before)
    assert not torch.allclose(after.hidden, before)


# --- select() and batching ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODELS)
def test_select_then_step_matches_the_full_batch(name):
    model, tokenizer = _encoder(name)
    backbone = Backbone(model)
    inputs = _batch(tokenizer, model)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    with torch.no_grad():
        full = backbone(**inputs)
        state = backbone.step(backbone.start(**inputs))
        kept = backbone.select(state, torch.tensor([1, 0]))  # drops the longest row, reorders the rest
        assert kept.layer == 1
        assert kept.hidden.shape[1] == max(lengths[0], lengths[1]) < inputs["input_ids"].shape[1]
        out = backbone.step(kept)
    for new_row, old_row in enumerate([1, 0]):
        n = lengths[old_row]
        _close(out.hidden[new_row, :n], full[1][old_row, :n])


def test_select_with_a_bool_mask_and_no_trim_keeps_the_width():
    model, tokenizer = _encoder("tiny-mpnet")
    backbone = Backbone(model)
    inputs = _batch(tokenizer, model)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    with torch.no_grad():
        full = backbone(**inputs)
        state = backbone.step(backbone.start(**inputs))
        kept = backbone.select(state, torch.tensor([False, True, True]), trim=False)
        assert kept.hidden.shape[:2] == (2, inputs["input_ids"].shape[1])
        out = backbone.step(kept)
    for new_row, old_row in enumerate([1, 2]):
        n = lengths[old_row]
        _close(out.hidden[new_row, :n], full[1][old_row, :n])


@pytest.mark.parametrize("name", TINY_MODELS)
def test_each_example_alone_equals_its_row_in_the_padded_batch(name):
    model, tokenizer = _encoder(name)
    backbone = Backbone(model)
    inputs = _batch(tokenizer, model)
    with torch.no_grad():
        batched = backbone(**inputs)
        for row in range(len(TEXTS)):
            n = int(inputs["attention_mask"][row].sum())
            alone = {k: v[row:row + 1, :n] for k, v in inputs.items()}
            for single, padded in zip(backbone(**alone), batched, strict=True):
                _close(single[0], padded[row, :n])


# --- truncated students -------------------------------------------------------------------------------


def test_layer_selection_first_every_and_indices():
    assert layer_selection(4, first=2) == [0, 1]
    assert layer_selection(4, every=2) == [1, 3]
    assert layer_selection(4, every=1) == [0, 1, 2, 3]
    assert layer_selection(4, every=3) == [2]
    assert layer_selection(4, indices=[0, 2]) == [0, 2]


@pytest.mark.parametrize("kwargs", [{}, {"first": 1, "every": 2}, {"first": 0}, {"first": 5}, {"every": 0},
                                    {"every": 5}])
def test_layer_selection_rejects_bad_choices(kwargs):
    with pytest.raises(ValueError):
        layer_selection(4, **kwargs)


@pytest.mark.parametrize("keep", [[], [4], [-1], [1, 1]])
def test_keep_layers_rejects_bad_indices(keep):
    model, _ = _four_layer("tiny-bert")
    with pytest.raises(ValueError, match="distinct indices"):
        keep_layers(model, keep)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_keep_layers_output_equals_the_chosen_original_layers_in_sequence(name):
    original, tokenizer = _four_layer(name)
    keep = layer_selection(4, every=2)
    student = keep_layers(original, keep)
    inputs = _batch(tokenizer, original)
    real = inputs["attention_mask"].bool()
    backbone = Backbone(original)
    with torch.no_grad():
        state = backbone.start(**inputs)
        hidden = state.hidden
        for i in keep:
            out = backbone.layers[i](hidden, **state.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        got = student(**inputs).last_hidden_state
        via_backbone = Backbone(student)(**inputs)[-1]
    _close(got[real], hidden[real])
    _close(via_backbone[real], hidden[real])


@pytest.mark.parametrize("name", TINY_MODELS)
def test_keep_layers_copies_layers_and_updates_the_config(name):
    original, _ = _four_layer(name)
    student = keep_layers(original, [0, 2])
    assert student.config.num_hidden_layers == 2 and len(Backbone(student).layers) == 2
    assert original.config.num_hidden_layers == 4 and len(Backbone(original).layers) == 4
    source = Backbone(original).layers[2].state_dict()
    copied = Backbone(student).layers[1].state_dict()
    assert source.keys() == copied.keys()
    assert all(torch.equal(source[k], copied[k]) for k in source)
    snapshot = {k: v.clone() for k, v in Backbone(original).state_dict().items()}
    with torch.no_grad():
        for param in Backbone(student).layers.parameters():
            param.add_(1.0)
        next(iter(student.embeddings.parameters())).add_(1.0)
    after = Backbone(original).state_dict()
    assert all(torch.equal(snapshot[k], after[k]) for k in snapshot)


def test_keep_layers_student_follows_its_own_attention_implementation():
    original, tokenizer = _four_layer("tiny-bert")
    student = keep_layers(original, [1, 3])
    student.set_attn_implementation("eager")
    with torch.no_grad():
        out = student(**_batch(tokenizer, original), output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == 2
    assert all(a is not None for a in out.attentions)


# --- unsupported models -------------------------------------------------------------------------------


def test_unsupported_model_type_names_the_supported_families():
    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=16))
    with pytest.raises(ValueError, match="gpt2") as err:
        Backbone(gpt2)
    assert all(family in str(err.value) for family in FAMILIES)
    with pytest.raises(ValueError, match="Supported"):
        keep_layers(gpt2, [0])


def test_task_model_instead_of_base_model_raises_value_error():
    base, _ = tiny_encoder("tiny-bert")
    task_model = BertForSequenceClassification(copy.deepcopy(base.config))
    with pytest.raises(ValueError, match="base model"):
        Backbone(task_model).num_layers  # noqa: B018 - the property is what fails


# --- heads and pooling --------------------------------------------------------------------------------


def _hidden_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return hidden, mask


def test_mean_pooling_ignores_padding():
    hidden, mask = _hidden_and_mask()
    pooled = pool(hidden, mask, "mean")
    _close(pooled[0], hidden[0, :3].mean(dim=0))
    _close(pooled[1], hidden[1].mean(dim=0))
    changed = hidden.clone()
    changed[0, 3:] = 1000.0
    _close(pool(changed, mask, "mean"), pooled)


def test_cls_pooling_takes_position_zero():
    hidden, mask = _hidden_and_mask()
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    changed = hidden.clone()
    changed[:, 1:] = -5.0
    assert torch.equal(pool(changed, mask, "cls"), hidden[:, 0])


def test_pooler_pooling_applies_the_encoders_pooler():
    model, _ = tiny_encoder("tiny-bert")
    hidden = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        got = pool(hidden, mask, "pooler", model.pooler)
        want = torch.tanh(model.pooler.dense(hidden[:, 0]))
    _close(got, want)


def test_pooler_pooling_without_a_pooler_raises():
    hidden, mask = _hidden_and_mask()
    with pytest.raises(ValueError, match="needs an encoder with a pooler"):
        pool(hidden, mask, "pooler", None)


def test_unknown_pooling_raises():
    hidden, mask = _hidden_and_mask()
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="unknown pooling"):
        SequenceHead(4, 2, pooling="max")


def test_pooler_head_on_distilbert_raises_at_forward():
    built = build_model(ModelConfig(name="tiny-distilbert", pooling="pooler"), "classification", 2)
    with pytest.raises(ValueError, match="pooler"):
        built.model(_features(built, "classification", TEXTS[:2]))


# --- build_model --------------------------------------------------------------------------------------


def _features(built, task: str, texts) -> dict[str, torch.Tensor]:
    if task == "token_classification":
        examples = [{"tokens": t.split()} for t in texts]
    elif task == "pair_classification":
        examples = [{"text": t, "text_pair": "a new film"} for t in texts]
    else:
        examples = [{"text": t} for t in texts]
    return collate(built.featurizer.encode(examples, task), built.featurizer.pad_id)


@functools.cache
def _source(name: str = "tiny-bert") -> Source:
    """A teacher-like encoder to truncate or shape after, shared between tests (build_model copies it)."""
    return Source(*tiny_encoder(name, seed=3))


BUILDS = {
    "pretrained": (ModelConfig(name="tiny-bert", pooling="pooler"), None),
    "truncated": (ModelConfig(kind="truncated", first=1), "tiny-bert"),
    "truncated-mpnet": (ModelConfig(kind="truncated", layers=[1]), "tiny-mpnet"),
    "random": (ModelConfig(kind="random", hidden_size=16, num_heads=2, num_layers=1), "tiny-roberta"),
    "random-distilbert": (ModelConfig(kind="random", hidden_size=16, num_heads=4), "tiny-distilbert"),
    "ngram": (ModelConfig(kind="ngram", num_buckets=1000, embed_dim=8, hidden_dim=4), None),
}


@pytest.mark.parametrize("task", ["classification", "pair_classification"])
@pytest.mark.parametrize("key", list(BUILDS))
def test_build_model_sequence_logits_shape(key, task):
    cfg, source = BUILDS[key]
    built = build_model(cfg, task, 3, source=_source(source) if source else None)
    with torch.no_grad():
        logits = built.model.eval()(_features(built, task, TEXTS))
    assert logits.shape == (3, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("key", [k for k in BUILDS if k != "ngram"])
def test_build_model_token_logits_shape(key):
    cfg, source = BUILDS[key]
    built = build_model(cfg, "token_classification", 5, source=_source(source) if source else None)
    batch = _features(built, "token_classification", TEXTS)
    with torch.no_grad():
        logits = built.model.eval()(batch)
    assert logits.shape == (*batch["input_ids"].shape, 5)


def test_build_truncated_keeps_the_first_layer_and_leaves_the_source_alone():
    encoder, tokenizer = tiny_encoder("tiny-bert", seed=3)
    built = build_model(ModelConfig(kind="truncated", first=1), "classification", 2, source=Source(encoder, tokenizer))
    assert built.model.backbone.num_layers == 1
    assert built.architecture["hf_config"]["num_hidden_layers"] == 1
    assert len(encoder.encoder.layer) == 2 and encoder.config.num_hidden_layers == 2
    kept = built.model.backbone.layers[0].state_dict()
    assert all(torch.equal(v, encoder.encoder.layer[0].state_dict()[k]) for k, v in kept.items())


def test_build_random_uses_the_smaller_sizes():
    built = build_model(ModelConfig(kind="random", hidden_size=16, num_heads=2, num_layers=1), "classification", 4,
                        source=_source())
    backbone = built.model.backbone
    assert backbone.hidden_size == 16 and backbone.num_layers == 1
    assert backbone.config.num_attention_heads == 2
    assert built.model.head.classifier.in_features == 16


def test_build_random_distilbert_honours_intermediate_size():
    built = build_model(ModelConfig(kind="random", intermediate_size=16), "classification", 2,
                        source=_source("tiny-distilbert"))
    assert built.model.backbone.layers[0].ffn.lin1.out_features == 16


def test_build_random_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        build_model(ModelConfig(kind="random", hidden_size=30, num_heads=4), "classification", 2, source=_source())


def test_build_truncated_without_source_or_name_raises():
    with pytest.raises(ValueError, match="needs 'name' or a teacher"):
        build_model(ModelConfig(kind="truncated", first=1), "classification", 2)


@pytest.mark.parametrize("key, task", [(k, "classification") for k in BUILDS]
                         + [(k, "token_classification") for k in BUILDS if k != "ngram"])
def test_model_from_architecture_rebuilds_the_same_shapes(key, task):
    cfg, source = BUILDS[key]
    built = build_model(cfg, task, 3, source=_source(source) if source else None)
    rebuilt = model_from_architecture(built.architecture)
    want = {k: tuple(v.shape) for k, v in built.model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert got == want
    assert type(rebuilt) is type(built.model)


def test_model_from_architecture_rejects_unknown_types():
    with pytest.raises(ValueError, match="unknown architecture type"):
        model_from_architecture({"type": "lstm"})


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "pretrained"}, "needs 'name'"),
    ({"kind": "truncated"}, "exactly one"),
    ({"kind": "truncated", "first": 1, "every": 2}, "exactly one"),
    ({"kind": "truncated", "every": 1, "layers": [0]}, "exactly one"),
    ({"kind": "ngram", "dropout": 1.0}, "dropout"),
    ({"kind": "ngram", "dropout": -0.1}, "dropout"),
    ({"kind": "ngram", "max_length": 1}, "max_length"),
    ({"kind": "pretrained", "name": "tiny-bert", "encoder_dropout": 1.0}, "encoder_dropout"),
    ({"kind": "ngram", "encoder_dropout": 0.1}, "encoder_dropout: unknown key for kind 'ngram'"),
    ({"kind": "ngram", "first": 1}, "'first' belongs to 'truncated'"),
    ({"kind": "copy", "name": "tiny-bert"}, "name: unknown key for kind 'copy'"),
    ({"kind": "ngrm"}, "did you mean 'ngram'"),
    ({"kind": "hf"}, "needs 'name'"),
])
def test_model_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-distilbert"])
def test_encoder_dropout_replaces_every_dropout_rate_and_survives_rebuilding(name):
    built = build_model(ModelConfig(name=name, encoder_dropout=0.25), "classification", 2)
    rates = {m.p for m in built.model.backbone.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.25}
    rebuilt = model_from_architecture(built.architecture)
    assert {m.p for m in rebuilt.backbone.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}


@pytest.mark.parametrize("pooling, trainable", [("mean", False), ("cls", False), ("pooler", True)])
def test_only_a_used_pooler_is_trainable(pooling, trainable):
    built = build_model(ModelConfig(name="tiny-bert", pooling=pooling), "classification", 2)
    pooler = list(built.model.pooler.parameters())
    assert pooler and all(p.requires_grad == trainable for p in pooler)
    assert all(p.requires_grad for n, p in built.model.named_parameters() if ".pooler." not in n)


def test_ngram_for_token_classification_raises():
    with pytest.raises(ValueError, match="token classification"):
        build_model(ModelConfig(kind="ngram", num_buckets=100), "token_classification", 3)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("key", ["pretrained", "random", "ngram"])
def test_init_seed_makes_building_deterministic(key):
    cfg, source = BUILDS[key]
    src = _source(source) if source else None
    first = build_model(cfg, "classification", 3, source=src).model
    torch.randn(10)  # the global RNG moving on must not matter
    again = build_model(cfg, "classification", 3, source=src).model
    other = build_model(dataclasses.replace(cfg, init_seed=1), "classification", 3, source=src).model
    assert _same_weights(first, again)
    assert not _same_weights(first, other)


def test_build_model_does_not_consume_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_model(BUILDS["ngram"][0], "classification", 2)
    assert torch.equal(torch.rand(3), expected)


# --- NgramClassifier ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden_dim", [0, 6])
def test_ngram_padding_does_not_change_the_output(hidden_dim):
    torch.manual_seed(0)
    model = NgramClassifier(num_buckets=50, num_labels=3, embed_dim=8, hidden_dim=hidden_dim).eval()
    ids = torch.tensor([[5, 7, 9], [3, 0, 0]])
    with torch.no_grad():
        logits = model({"input_ids": ids})
        padded = model({"input_ids": torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)})
        alone = model({"input_ids": torch.tensor([[3]])})
        reordered = model({"input_ids": torch.tensor([[9, 5, 7]])})
    _close(padded, logits)
    _close(alone[0], logits[1])
    _close(reordered[0], logits[0])  # a bag: order does not matter
    assert not torch.allclose(logits[0], logits[1])


def test_ngram_padding_row_is_zero_and_stays_zero_after_training():
    model = NgramClassifier(num_buckets=20, num_labels=2, embed_dim=4)
    assert torch.equal(model.embedding.weight[0], torch.zeros(4))
    loss = model({"input_ids": torch.tensor([[1, 2, 0, 0]])}).sum()
    loss.backward()
    assert torch.equal(model.embedding.weight.grad[0], torch.zeros(4))


# --- losses -------------------------------------------------------------------------------------------


def _naive_softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def _naive_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    rows = list(zip(student.reshape(-1, student.shape[-1]).tolist(), teacher.reshape(-1, teacher.shape[-1]).tolist(),
                    strict=True))
    total = 0.0
    for s_row, t_row in rows:
        p_s = _naive_softmax([x / temperature for x in s_row])
        p_t = _naive_softmax([x / temperature for x in t_row])
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    return temperature**2 * total / len(rows)


def _logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 5)])
def test_kd_kl_equals_the_naive_reference(temperature, shape):
    student, teacher = _logits(*shape, seed=1), _logits(*shape, seed=2)
    got = kd_kl(student, teacher, temperature)
    assert got.item() == pytest.approx(_naive_kd(student, teacher, temperature), rel=1e-5, abs=1e-6)
    assert got.item() > 0


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_kl_with_a_mask_counts_only_selected_rows(temperature):
    student, teacher = _logits(2, 4, 3, seed=3), _logits(2, 4, 3, seed=4)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    got = kd_kl(student, teacher, temperature, mask=mask)
    assert got.item() == pytest.approx(_naive_kd(student[mask], teacher[mask], temperature), rel=1e-5, abs=1e-6)
    changed = student.clone()
    changed[~mask] = 100.0
    assert kd_kl(changed, teacher, temperature, mask=mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_kd_kl_with_an_empty_mask_is_zero_and_differentiable():
    student = _logits(2, 3).requires_grad_()
    loss = kd_kl(student, _logits(2, 3, seed=1), 2.0, mask=torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_kl_is_zero_when_student_equals_teacher(temperature):
    logits = _logits(5, 7)
    assert kd_kl(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_kl_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_kl(_logits(2, 3), _logits(2, 4))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_kd_kl_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be positive"):
        kd_kl(_logits(2, 3), _logits(2, 3), temperature)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_kl_gradient_matches_the_closed_form(temperature):
    student = _logits(4, 5, seed=5).requires_grad_()
    teacher = _logits(4, 5, seed=6)
    kd_kl(student, teacher, temperature).backward()
    # d/ds of T^2 * mean_rows KL(p_t || p_s) = T * (p_s - p_t) / rows
    p_s = torch.softmax(student.detach() / temperature, dim=-1)
    p_t = torch.softmax(teacher / temperature, dim=-1)
    _close(student.grad, temperature * (p_s - p_t) / 4)


def test_kd_kl_gradcheck_in_double():
    student = _logits(3, 4, seed=7).double().requires_grad_()
    teacher = _logits(3, 4, seed=8).double()
    assert kd_kl(student, teacher, 2.0).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda s: kd_kl(s, teacher, 2.0), (student,))


def test_cross_entropy_ignores_masked_positions_and_matches_the_reference():
    logits = _logits(2, 3, 4, seed=9)
    labels = torch.tensor([[0, IGNORE_INDEX, 3], [IGNORE_INDEX, 2, 1]])
    got = cross_entropy(logits, labels)
    terms = [-math.log(_naive_softmax(logits[b, i].tolist())[labels[b, i]])
             for b in range(2) for i in range(3) if labels[b, i] != IGNORE_INDEX]
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    changed = logits.clone()
    changed[0, 1] = 50.0
    changed[1, 0] = -50.0
    assert cross_entropy(changed, labels).item() == pytest.approx(got.item(), rel=1e-6)


def test_cross_entropy_on_flat_logits_matches_the_reference():
    logits = _logits(4, 3, seed=10)
    labels = torch.tensor([2, 0, 1, 1])
    want = sum(-math.log(_naive_softmax(row)[y]) for row, y in zip(logits.tolist(), labels.tolist(), strict=True)) / 4
    assert cross_entropy(logits, labels).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mix_weights_task_and_kd(alpha):
    task, kd = torch.tensor(2.0), torch.tensor(10.0)
    assert mix(task, kd, alpha).item() == pytest.approx((1 - alpha) * 2.0 + alpha * 10.0)
