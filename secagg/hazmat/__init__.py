"""Dangerous primitives: keys, PRG, quantization, Shamir, packing, random integers, Merkle core, Paillier.

The protocol recipes (:mod:`secagg.masking`, :mod:`secagg.paillier`) import these, never the reverse.
"""
