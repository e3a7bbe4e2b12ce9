"""Networks of image_gen: the one-step DiT generator and the ResNet feature encoder (MAE)."""
from image_gen.models.encoder import MAE, ResNetEncoder
from image_gen.models.generator import GENERATOR_SIZES, DriftDiT, build_generator

__all__ = ["DriftDiT", "GENERATOR_SIZES", "MAE", "ResNetEncoder", "build_generator"]
