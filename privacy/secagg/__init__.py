"""SecAgg+: secure aggregation with a k-regular graph, as a pure, transport-agnostic library.

Implements Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning") with the sparse k-regular communication graph of Bell et al. 2020 (CCS,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"), including Bonawitz et
al.'s consistency check (signed survivor sets) of the malicious-server variant. No Flower
imports: the Flower workflow / client mod only moves the :mod:`.messages` between
:class:`SecAggClient` and :class:`SecAggServer`.

Modules: :mod:`.shamir` (secret sharing), :mod:`.crypto` (X25519, HKDF, AES-GCM, Ed25519),
:mod:`.prg` (AES-CTR masks), :mod:`.graph` (k-regular graph), :mod:`.quantization`
(float <-> Z_2^32), :mod:`.messages` (wire format), :mod:`.client`, :mod:`.server`,
:mod:`.simulation` (in-process rounds).
"""

from .client import ClientStage, SecAggClient
from .crypto import generate_identity_key, identity_public_bytes
from .errors import (
    DecryptionError,
    InsufficientParticipantsError,
    MalformedMessageError,
    ProtocolStateError,
    ReconstructionError,
    SecAggError,
    SignatureVerificationError,
)
from .graph import build_graph, default_degree, default_threshold, effective_degree
from .messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyDirectory,
    MaskedInput,
    SetupConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from .quantization import NoiseHook, Quantizer
from .server import AggregationResult, SecAggServer, ServerStage
from .simulation import Dropouts, make_identities, run_round, run_secagg, run_secagg_mean

__all__ = [
    "AdvertiseKeys",
    "AggregationResult",
    "ClientStage",
    "ConsistencyCheck",
    "ConsistencySignature",
    "DecryptionError",
    "Dropouts",
    "EncryptedShares",
    "InsufficientParticipantsError",
    "KeyDirectory",
    "MalformedMessageError",
    "MaskedInput",
    "NoiseHook",
    "ProtocolStateError",
    "Quantizer",
    "ReconstructionError",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "ServerStage",
    "SetupConfig",
    "ShareBundle",
    "ShareKeys",
    "SignatureVerificationError",
    "UnmaskRequest",
    "UnmaskResponse",
    "build_graph",
    "default_degree",
    "default_threshold",
    "effective_degree",
    "generate_identity_key",
    "identity_public_bytes",
    "make_identities",
    "run_round",
    "run_secagg",
    "run_secagg_mean",
]
