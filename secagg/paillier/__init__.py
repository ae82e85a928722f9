"""Paillier mode: key ceremony, silo encryption, streaming aggregation, guarded partial decryption, combination.

The roles are explicit stage machines (DESIGN 5, STYLE rule 7), one module each:

- :func:`run_key_ceremony` (:mod:`.ceremony`; trusted dealer, run by the consortium at setup) -> public key +
  sealed shares;
- :class:`PaillierContributor` (:mod:`.contributor`; silo): ``encrypt_update`` -> ciphertext chunks + a signed
  Merkle commitment with a proof of plaintext knowledge; ``answer_folds`` -> signed folds for the decrypters;
- :class:`PaillierAggregator` (:mod:`.aggregator`; coordinator): multiplies chunks into a running aggregate as
  they arrive, builds the :class:`DecryptionRequest`, answers spot-check challenges, combines partial
  decryptions;
- :class:`PartialDecrypter` (:mod:`.decrypter`; silo): checks that the aggregate is the product of
  >= ``min_cohort`` roster-signed contributions, over the whole vector against the contributors' signed folds
  for a seed IT draws (and at positions it chooses), then partially decrypts it once per round.

The round parameters are in :mod:`.config`, the messages in :mod:`.messages`.

Notes:
    - Decryption-oracle defence (DESIGN 5). A malicious coordinator could ask the key holders to decrypt one
      silo's ciphertext disguised as the aggregate. Every contribution is committed to by a Merkle root (RFC 6962
      hashing, leaf = H(0x00 || ciphertext), node = H(0x01 || left || right)) signed with the silo's roster key
      and bound to (federation, round, session id, key fingerprint, vector length, silo id). A decrypter refuses
      unless it sees >= ``min_cohort`` distinct roster-signed commitments for this context and, at ``spot_checks``
      positions it draws with its OWN randomness after the request is fixed, every contributor's ciphertext
      opens against its signed root and their product equals the aggregate (why its own positions:
      :mod:`secagg.paillier.decrypter`).
    - Spot-check openings show a decrypter other silos' individual ciphertexts at a few positions. They are
      still encrypted under the threshold key, so only a coalition of >= t key holders could read them, which
      is the trust assumption of Paillier mode anyway.
    - Whole-aggregate integrity and no cancellation by colluders (:mod:`secagg.paillier.decrypter`,
      :mod:`secagg.hazmat.paillier.knowledge`): each contribution carries a proof of plaintext knowledge of a
      fold of its ciphertexts (weights fixed by its signed root; the coordinator checks the fold as chunks
      arrive), and after the request is fixed every decrypter draws a fold seed, every contributor signs its
      fold for that seed with a proof, and the decrypter compares the product of the folds with the fold of
      the aggregate (soundness 2^-128). A silo colluding with the coordinator can therefore neither swap
      positions of the aggregate nor submit ciphertexts derived from another silo's (inverted or
      re-randomised): it would have to know their plaintexts. A contributor that leaves before answering the
      folds makes decrypters refuse the request (the round aborts; its ciphertexts are in the aggregate).
    - Slot overflow (integrity only): no range proof bounds what a silo encrypts. A malicious silo can put any
      value in ``[0, N)`` into a plaintext, so it can shift any slot of the decoded sum by any amount and
      carry into the slots above it; it cannot read anything (its plaintext is added, never compared), and
      honest silos' values stay hidden. The decoded aggregate is therefore only as correct as the silos are
      honest, as in masking mode; DP noise bounds an honest silo's influence, not a malicious one's.
"""

from secagg.paillier.aggregator import (
    AggregatorStage,
    ContributionStore,
    InMemoryContributionStore,
    PaillierAggregator,
    combine_partials,
)
from secagg.paillier.ceremony import (
    DEFAULT_COLLUSION,
    DEFAULT_MIN_COHORT,
    KeyCeremonyResult,
    ceremony_context,
    check_trust_parameters,
    open_key_share,
    run_key_ceremony,
)
from secagg.paillier.config import (
    DEFAULT_CHUNK_CIPHERTEXTS,
    DEFAULT_SPOT_CHECKS,
    SESSION_NONCE_BYTES,
    PaillierRoundConfig,
    session_id_for,
)
from secagg.paillier.contributor import ContributorStage, PaillierContributor
from secagg.paillier.decrypter import (
    DecrypterStage,
    DecryptionHistory,
    InMemoryDecryptionHistory,
    PartialDecrypter,
)
from secagg.paillier.messages import (
    CiphertextChunk,
    DecryptionRequest,
    FoldAnswer,
    FoldRequest,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckOpening,
    SpotCheckResponse,
)

__all__ = [
    "DEFAULT_CHUNK_CIPHERTEXTS",
    "DEFAULT_COLLUSION",
    "DEFAULT_MIN_COHORT",
    "DEFAULT_SPOT_CHECKS",
    "SESSION_NONCE_BYTES",
    "AggregatorStage",
    "CiphertextChunk",
    "ContributionStore",
    "ContributorStage",
    "DecrypterStage",
    "DecryptionHistory",
    "DecryptionRequest",
    "FoldAnswer",
    "FoldRequest",
    "InMemoryContributionStore",
    "InMemoryDecryptionHistory",
    "KeyCeremonyResult",
    "PaillierAggregator",
    "PaillierContributor",
    "PaillierRoundConfig",
    "PartialDecrypter",
    "PartialDecryptionMessage",
    "SignedCommitment",
    "SpotCheckChallenge",
    "SpotCheckOpening",
    "SpotCheckResponse",
    "ceremony_context",
    "check_trust_parameters",
    "combine_partials",
    "open_key_share",
    "run_key_ceremony",
    "session_id_for",
]
