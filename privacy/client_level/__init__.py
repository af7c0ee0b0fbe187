"""Client-level differential privacy: central DP-FedAvg with a trusted server
(:mod:`~fedssl.privacy.client_level.central`; McMahan et al. 2018) and distributed Skellam
noise shares added by the clients under secure aggregation
(:mod:`~fedssl.privacy.client_level.distributed`; Agarwal, Kairouz & Liu 2021).
"""
