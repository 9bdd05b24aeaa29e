"""Encoders (2D/3D), heads, 2D->3D lifts, the transfer autoencoder, weight loading and the model file."""

from medtl.models.autoencoder import Decoder, VAEHead, vae_loss
from medtl.models.checkpoint import Model, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from medtl.models.encoders import ARCHITECTURES, DenseNetEncoder, ResNetEncoder, build_encoder
from medtl.models.heads import TASKS, Head, build_head, predict_from_logits, task_for, task_loss
from medtl.models.lift import LIFTS, ACSConv, SliceEncoder, acs, inflate, layer_groups, lift, slices
from medtl.models.transfer import LIFT_OPTIONS, encoder_for
from medtl.models.weights import LoadReport, load_weights

__all__ = [
    "ARCHITECTURES", "LIFT_OPTIONS", "LIFTS", "TASKS", "ACSConv", "Decoder", "DenseNetEncoder", "Head", "LoadReport", "Model",
    "ResNetEncoder", "SliceEncoder", "VAEHead", "acs", "build_encoder", "build_head", "build_model", "encoder_for", "inflate",
    "layer_groups", "lift", "load_checkpoint", "load_weights", "predict_from_logits", "read_checkpoint",
    "save_checkpoint", "slices", "task_for", "task_loss", "vae_loss",
]
