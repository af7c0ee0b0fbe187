"""Who a party is and what it signed: Ed25519 identity keys and the registry
(:mod:`~fedssl.privacy.identity.keys`), the signed, hash-chained privacy ledger
(:mod:`~fedssl.privacy.identity.ledger`), and the TLS CA, server certificate and node keys
of a deployment (:mod:`~fedssl.privacy.identity.certs`), all on ``cryptography``.
"""
