"""Privacy of a federated run, without Flower: record-level DP-SGD (``dp_sgd``), the
accountants behind one registry (``accounting``), the sites' keys and signed ledgers
(``identity``), SecAgg+ as a transport-agnostic protocol (``secagg``), client-level DP
(``client_level``) and the independent audit of a run's claims (``audit``).

Each sub-package imports only the ones below it (``tests/fedssl/test_import_graph.py``);
``client/`` and ``server/`` carry them over Flower messages.
"""
