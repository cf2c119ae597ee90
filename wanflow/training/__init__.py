"""Training: the flow-matching objective (``flow``), VAE training and latent statistics (``vae``), a generic loop
with resumable checkpoints (``loop``) and a tokenizer builder (``tokenizer``). Applied from outside to plain models."""

from wanflow.training.flow import (
    expert_range,
    flow_matching_loss,
    image_condition,
    maybe_drop_context,
    sample_timesteps,
)
from wanflow.training.loop import History, TrainConfig, train
from wanflow.training.vae import fold_latent_stats, vae_loss

__all__ = [
    "History",
    "TrainConfig",
    "expert_range",
    "flow_matching_loss",
    "fold_latent_stats",
    "image_condition",
    "maybe_drop_context",
    "sample_timesteps",
    "train",
    "vae_loss",
]
