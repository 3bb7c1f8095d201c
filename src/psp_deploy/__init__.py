"""psp-deploy: pSp encoders and StyleGAN2 decoders, from checkpoint to deployed runtime."""

__version__ = "0.1.0"
