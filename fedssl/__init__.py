"""fedssl: federated, differentially private self-supervised learning on Flower."""

__version__ = "0.1.0"
