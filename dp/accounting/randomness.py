"""What the DP-SGD randomness does and does not guarantee (text for the threat model and reports).

Kept here, without torch, so the coordinator, the auditor and the report renderer can quote
it; ``dp.training`` re-exports it and implements exactly what it says.

Notes:
    Opacus' ``PrivacyEngine(secure_mode=True)`` imports ``torchcsprng``, which is
    unmaintained and not installable for torch 2.13, so the engine's secure mode cannot be
    used. ``dp.training`` therefore composes Opacus' own building blocks (GradSampleModule,
    DPOptimizer, DPDataLoader) directly, and passes each one a generator it seeded itself.
    Findings from the Opacus 1.6 and torch 2.13 sources that this relies on:
    ``DPOptimizer(secure_mode=True, generator=g)`` turns on the floating-point-attack
    mitigation of ``opacus.optimizers.optimizer._generate_noise`` without torchcsprng; the
    Poisson sampler of ``DPDataLoader(generator=g)`` draws from ``g``; and
    ``torch.Generator.manual_seed`` keeps only the low 32 bits of the seed
    (``mt19937::init_with_uint32``), so seeding from 8 bytes of ``os.urandom`` would give
    32 bits of entropy. We set the whole MT19937 state instead.
"""

from __future__ import annotations

__all__ = ["RANDOMNESS_STATEMENT"]

#: Exactly what is and is not covered by the randomness of DP-SGD in a silo.
RANDOMNESS_STATEMENT = """\
Randomness of DP-SGD in each silo (Opacus 1.6, torch 2.13, CPU).

Covered:
- Gaussian noise and Poisson sampling use two separate torch CPU generators per round, each
  with its full MT19937 state (624 x 32-bit words, 19,968 bits) filled from the operating
  system's CSPRNG (os.urandom). States are fresh every round, never reused across rounds or
  silos, never written to disk or logged.
- Noise is drawn with Opacus' secure_mode noise path (DPOptimizer(secure_mode=True)): each
  coordinate is the sum of four Gaussian draws divided by two after discarding one draw,
  the mitigation of floating-point attacks on Gaussian sampling (Holohan and Braghin 2021,
  arXiv:2107.10138, Section 5.1; attack on Opacus: arXiv:2112.05307).
- Sampling is Poisson (each record joins each step independently with probability q), which
  is what the RDP/PLD accounting assumes; the data loader never shuffles.

Not covered:
- MT19937 is not a cryptographically secure generator: its outputs are linear in its
  state, and anyone who observed 624 consecutive raw outputs could predict the rest. Raw
  outputs never leave the silo (the noise is added to clipped gradient sums and the update
  is masked by secure aggregation), but this is a computational assumption, not a proof.
  Opacus' intended fix, torchcsprng (AES-CTR on /dev/urandom), is unmaintained and not
  installable for torch 2.13.
- Gaussian noise is sampled in floating point (torch.normal, Box-Muller over MT19937
  uniforms), not with an exact discrete Gaussian sampler; the mitigation above raises the
  cost of known floating-point attacks but does not make the sampler exact.
- Timing side channels of sampling and training inside the silo are out of scope.
- The Poisson sampler's per-step batch size is visible to whoever sees per-step
  computation time inside the silo; the coordinator sees neither.
"""
