"""Models: a layer-by-layer adapter for Hugging Face encoders, task heads, students and tiny test models."""

from summon.models.backbone import Backbone, EncoderState, keep_layers, layer_selection
from summon.models.build import (
    AnyModelConfig,
    Built,
    CopyModelConfig,
    EncoderModelConfig,
    HFModelConfig,
    ModelConfig,
    NgramModelConfig,
    PretrainedModelConfig,
    RandomModelConfig,
    TruncatedModelConfig,
    build_model,
    model_from_architecture,
)
from summon.models.heads import EncoderClassifier, SequenceHead, TokenHead, pool
from summon.models.hf import HFTaskModel
from summon.models.ngram import NgramClassifier
from summon.models.pretrained import load_encoder
from summon.models.tiny import TINY_MODELS, tiny_encoder, tiny_tokenizer

__all__ = [
    "TINY_MODELS", "AnyModelConfig", "Backbone", "Built", "CopyModelConfig", "EncoderClassifier", "EncoderModelConfig",
    "EncoderState", "HFModelConfig", "HFTaskModel", "ModelConfig", "NgramClassifier", "NgramModelConfig",
    "PretrainedModelConfig", "RandomModelConfig", "SequenceHead", "TokenHead", "TruncatedModelConfig", "build_model",
    "keep_layers", "layer_selection", "load_encoder", "model_from_architecture", "pool", "tiny_encoder",
    "tiny_tokenizer",
]
