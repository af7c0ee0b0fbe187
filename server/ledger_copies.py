"""The server's copies of the sites' signed privacy ledgers, in ``RUN/ledger``.

What: in a real deployment each site keeps its ledger (:mod:`fedssl.privacy.identity.ledger`) in
its own
state directory. After every round it trained, a site sends the whole ledger and its public key
in its reply; the server stores them as ``RUN/ledger/<client>.jsonl`` and ``<client>.pub``, so
the run directory holds what ``fedssl audit`` needs, as in simulations.

Why it can be trusted: the copy is only accepted if every entry's hash chain and Ed25519
signature verify, the key is one the identity registry lists (``identities.json`` from
``fedssl certs``; the one listed for that site when its name is in it) and is used by no other
client, it is the one the server saw before (trust on first use only when there is no registry
at all), every entry names that client, and the new copy *extends* the stored one (the same
entries, in order, plus new ones): a site cannot rewrite the history it already reported. A
refused copy leaves the stored one untouched and is reported with its reason. The site's own
file stays the original; an auditor can compare the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedssl.atomic import atomic_path, atomic_write_bytes
from fedssl.privacy.identity.keys import IdentityError, load_public_key, public_pem
from fedssl.privacy.identity.ledger import LedgerError, read_ledger
from fedssl.run_layout import RunLayout

#: a ledger line is ~600 bytes; 4 MiB is several thousand rounds
MAX_LEDGER_BYTES = 4 << 20
#: the problem recorded for a ledger signed with a key the identity registry does not list
NOT_REGISTERED = "ledger-key-not-registered"


class _RefusedError(Exception):
    """A ledger copy that is not stored (the message says why)."""


def _safe_name(client: str) -> bool:
    return bool(client) and client.replace("-", "").replace("_", "").isalnum()


def store_copy(run_dir: Path, client: str, text: str, pub_pem: bytes,
               registry_key: Ed25519PublicKey | None = None,
               registry: Mapping[str, Ed25519PublicKey] | None = None) -> str | None:
    """Verify and store ``client``'s ledger copy; returns ``None`` or why it was refused.

    ``registry_key`` is the key the registry lists under ``client``'s name (if it does);
    ``registry`` is the whole registry (name -> key): with it, a key that is not in it is
    refused (:data:`NOT_REGISTERED`) and nothing is stored, instead of trusted on first use.

    Args:
        run_dir: the run directory (the copy goes to ``RUN/ledger``).
        client: the client's name, the stored file's name.
        text: the ledger copy.
        pub_pem: the PEM public key the ledger is signed with.
        registry_key: the registry's key for ``client``, or None.
        registry: the whole identity registry, or None (trust on first use).

    Returns:
        None if the copy was stored, else why it was refused.
    """
    if not _safe_name(client):
        return f"client name {client!r} is not a safe file name"
    try:
        size = len(text.encode("utf-8"))
    except (UnicodeEncodeError, AttributeError):  # lone surrogates, or not a str at all
        return "ledger copy is not UTF-8 text"
    if size > MAX_LEDGER_BYTES:
        return f"ledger copy larger than {MAX_LEDGER_BYTES} bytes"
    try:
        key = load_public_key(pub_pem)
    except (IdentityError, ValueError) as exc:
        return f"ledger public key unreadable: {exc}"
    pem = public_pem(key)
    if registry_key is not None and public_pem(registry_key) != pem:
        return "ledger key differs from the identity registry's key for this client"
    if registry is not None and all(public_pem(k) != pem for k in registry.values()):
        return (f"{NOT_REGISTERED}: the ledger of {client} is signed with a key the identity "
                "registry does not list; no copy kept")
    folder = RunLayout(run_dir).ledger_dir
    path = RunLayout(run_dir).ledger(client)
    pub_path = path.with_suffix(".pub")
    if registry is not None and folder.is_dir():
        for other in folder.glob("*.pub"):
            if other != pub_path and other.read_bytes() == pem:
                return (f"ledger key already used by client {other.stem}: one registered key "
                        "signs one site's ledger")
    folder.mkdir(parents=True, exist_ok=True)
    if pub_path.exists() and pub_path.read_bytes() != pem:
        return "ledger key differs from the key this client used before"
    # the copy is written beside the stored one and verified there; it replaces the stored one
    # atomically only if it verifies (a refusal raises _RefusedError, which discards it)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
            try:
                entries = read_ledger(tmp, key)
            except LedgerError as exc:
                raise _RefusedError("ledger copy does not verify: "
                                    f"{str(exc).replace(str(tmp), 'copy')}") from exc
            if any(e.client != client for e in entries):
                raise _RefusedError("ledger copy holds entries of another client")
            old = read_ledger(path, key) if path.exists() else []
            if [e.hash for e in entries[: len(old)]] != [e.hash for e in old]:
                raise _RefusedError("ledger copy does not extend the stored one (entries "
                                    "changed, removed or reordered)")
            if not pub_path.exists():
                atomic_write_bytes(pub_path, pem)
    except _RefusedError as exc:
        return str(exc)
    return None


def store_reply_copy(run_dir: Path, cid: str, text: str, pub: bytes, identity: str | None,
                     registry: Mapping[str, Ed25519PublicKey] | None) -> str | None:
    """Store a reply's ledger copy (:func:`store_copy`); None or why it was refused. The
    registry key is looked up by the identity name the reply gives (``identity``, e.g.
    ``node-1``; else the client id): with a registry, the ledger must be signed with that
    identity's registered key, not just any registered key.

    Args:
        run_dir: the run directory.
        cid: the client id the reply came from.
        text: the ledger copy.
        pub: the PEM public key the ledger is signed with.
        identity: the identity name the reply gives, or None.
        registry: the identity registry, or None.

    Returns:
        None if the copy was stored, else why it was refused.
    """
    name = identity or cid
    ident = (registry or {}).get(name)
    if registry is not None and ident is None:
        return (f"{NOT_REGISTERED}: {cid} replied as identity {name!r}, which the identity "
                "registry does not list; no copy kept")
    return store_copy(run_dir, cid, text, pub, ident, registry=registry)


class LedgerCopyKeeper:
    """The server's gate for the ledger copies that arrive with the sites' replies
    (:attr:`fedssl.server.strategy.FedSSLStrategy.ledger_gate`): each copy is verified and
    stored (:func:`store_reply_copy`) while its reply is screened, so that a reply whose
    copy cannot be trusted (:func:`untrusted`) is rejected before its update is averaged.
    ``registry_file`` is the identity registry the ledger keys must be in (when it exists;
    else trust on first use)."""

    def __init__(self, run_dir: Path, registry_file: Path) -> None:
        self.run_dir = run_dir
        self.registry_file = registry_file
        self._registry: dict[str, Ed25519PublicKey] | None = None

    def registry(self) -> dict[str, Ed25519PublicKey] | None:
        """The registry's name -> ledger key (read once it exists), None without one."""
        if self._registry is None and self.registry_file.exists():
            from fedssl.privacy.identity.keys import load_registry

            self._registry = {name: pub for name, (_, pub)
                              in load_registry(self.registry_file).items()}
        return self._registry

    def __call__(self, cid: str, text: str, pub: bytes, identity: str | None
                 ) -> tuple[str | None, bool]:
        """Verify and store the copy: (why it was refused or None, whether the reply's update
        must be rejected with it: :func:`untrusted`)."""
        problem = store_reply_copy(self.run_dir, cid, text, pub, identity, self.registry())
        return problem, problem is not None and untrusted(problem)


#: refusals that say the ledger's key or history cannot be trusted (not the identity's
#: registered key, a key another site uses, a key that changed, signatures that do not verify,
#: history rewritten): the update that came with such a copy is rejected too
UNTRUSTED = (NOT_REGISTERED, "ledger key differs", "ledger key already used",
             "ledger public key unreadable", "ledger copy does not verify",
             "ledger copy does not extend")


def untrusted(problem: str) -> bool:
    """Whether a copy refused for ``problem`` rejects its update as well. Other refusals
    (a client id that is no safe file name, a copy over the size cap, a ledger holding entries
    under another client id, e.g. from a run under another ``--client-id``) keep the old
    behaviour: the copy is refused and reported, the update counts."""
    return problem.startswith(UNTRUSTED)
