"""Threshold Paillier with a trusted dealer: keys, sealed shares, cheap encryption, proven partial decryption.

One module per concern: :mod:`.primes` (safe primes), :mod:`.keys` (key material and the dealer),
:mod:`.sealing` (shares sealed to their silos), :mod:`.obfuscators` (ciphertext randomness),
:mod:`.cipher` (encryption, homomorphic addition, byte form), :mod:`.proofs` (a partial decryption and its
batched proof), :mod:`.knowledge` (folds and proofs of plaintext knowledge), :mod:`.threshold` (partial decryption and combination), :mod:`.multiexp` (products of many
powers), :mod:`.parallel` (worker processes), :mod:`.packing` (mixed-radix slots).

Notes:
    - Scheme: Shoup's threshold RSA ("Practical threshold signatures", Eurocrypt 2000) carried over to Paillier by
      Fouque, Poupard and Stern ("Sharing decryption in the context of voting or lotteries", FC 2000) and
      Damgard and Jurik ("A generalisation, a simplification and some applications of Paillier's probabilistic
      public-key system", PKC 2001, section 4). Safe primes ``p = 2p' + 1``, ``q = 2q' + 1``; ``N = pq``;
      ``g = N + 1``; ``m = p'q'``; the secret ``d`` satisfies ``d = 0 mod m`` and ``d = 1 mod N`` and is shared
      t-of-l as ``1 + N g(X)`` with ``g`` a random polynomial over ``Z_m`` (key format 2, :mod:`.keys`; why it
      is safe and why it is cheap: :mod:`.threshold`); ``Delta = l!`` keeps every Lagrange coefficient an
      integer, so nobody ever needs the (secret) group order.
    - No party ever holds the factors in threshold mode, so there is no CRT speed-up anywhere (DESIGN 5).
"""

from secagg.hazmat.paillier.cipher import (
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    encrypt_plaintexts,
    encrypt_with,
    int_to_bytes,
    multiply_ciphertexts,
)
from secagg.hazmat.paillier.keys import (
    DEFAULT_KEY_BITS,
    MIN_PRODUCTION_KEY_BITS,
    SUPPORTED_KEY_BITS,
    KeyShare,
    ThresholdKeyMaterial,
    ThresholdPublicKey,
    check_key_share,
    deal_threshold_key,
)
from secagg.hazmat.paillier.knowledge import (
    FOLD_SEED_BYTES,
    FOLD_WEIGHT_BITS,
    PlaintextProof,
    fold_ciphertexts,
    fold_own,
    fold_weights,
    prove_plaintext_knowledge,
    verify_plaintext_knowledge,
)
from secagg.hazmat.paillier.obfuscators import (
    SHORT_EXPONENT_ASSUMPTION,
    SHORT_EXPONENT_BITS,
    ObfuscatorMode,
    ObfuscatorPool,
)
from secagg.hazmat.paillier.packing import RadixPacking
from secagg.hazmat.paillier.primes import generate_safe_prime
from secagg.hazmat.paillier.proofs import PartialDecryption, verify_partial_decryption
from secagg.hazmat.paillier.sealing import SealedShare, open_share, seal_share
from secagg.hazmat.paillier.threshold import (
    combine_partial_decryptions,
    lagrange_combine,
    partial_decrypt,
    verify_partial_decryptions,
)

__all__ = [
    "DEFAULT_KEY_BITS",
    "FOLD_SEED_BYTES",
    "FOLD_WEIGHT_BITS",
    "MIN_PRODUCTION_KEY_BITS",
    "SHORT_EXPONENT_ASSUMPTION",
    "SHORT_EXPONENT_BITS",
    "SUPPORTED_KEY_BITS",
    "KeyShare",
    "ObfuscatorMode",
    "ObfuscatorPool",
    "PartialDecryption",
    "PlaintextProof",
    "RadixPacking",
    "SealedShare",
    "ThresholdKeyMaterial",
    "ThresholdPublicKey",
    "check_key_share",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "combine_partial_decryptions",
    "deal_threshold_key",
    "encrypt_plaintexts",
    "encrypt_with",
    "fold_ciphertexts",
    "fold_own",
    "fold_weights",
    "generate_safe_prime",
    "int_to_bytes",
    "lagrange_combine",
    "multiply_ciphertexts",
    "open_share",
    "partial_decrypt",
    "prove_plaintext_knowledge",
    "seal_share",
    "verify_partial_decryption",
    "verify_partial_decryptions",
    "verify_plaintext_knowledge",
]
