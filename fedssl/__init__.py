"""fedssl: federated, differentially private self-supervised learning on Flower.

``fedssl.load_encoder(RUN)`` gives a run's trained encoder as a torch module (imported on
first use, so ``import fedssl`` stays light: :mod:`fedssl.ssl_core.encoder_file`).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "load_encoder":  # PEP 562: torch is imported only when it is asked for
        from fedssl.ssl_core.encoder_file import load_encoder

        return load_encoder
    raise AttributeError(f"module 'fedssl' has no attribute {name!r}")
