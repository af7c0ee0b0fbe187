"""Self-supervised learning, without Flower or privacy: data formats and partitioners,
augmentations, SSL objectives (each declaring its DP contract), encoders, the federated merge
rules and aggregators, and the evaluation of representations (linear probe, kNN, few-label,
fine-tuning). The other packages build on it; it imports none of them.
"""
