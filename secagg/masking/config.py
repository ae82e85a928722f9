"""The public parameters of one masking round and the threshold rules they must satisfy.

Notes:
    Against an active server colluding with up to ``c`` silos, the Shamir threshold must satisfy
    t > (n + c) / 2: otherwise the server can split honest silos into two groups that each reveal a
    different share type for the same peer (Bonawitz et al. CCS 2017, section 6.3 / Theorem 6.3). A round
    also never completes with fewer than ``min_cohort`` contributions, because a sum over very few silos
    reveals too much about each of them (with two, each learns the other's update).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import encode_fields
from secagg.hazmat.quantize import Quantizer
from secagg.masking.graph import check_graph_shape

__all__ = ["PROTOCOL_VERSION", "RoundConfig", "check_threshold", "minimum_threshold"]

PROTOCOL_VERSION = "secagg-bonawitz-v1"


def minimum_threshold(n: int, collusion: int) -> int:
    """The smallest t with t > (n + c) / 2."""
    return (n + collusion) // 2 + 1


def check_threshold(*, n: int, threshold: int, collusion: int, min_cohort: int) -> None:
    """Validate (n, t, c, min_cohort).

    Raises:
        InvalidParameters: with the rule that failed and the smallest safe threshold.
    """
    if n < 2:
        raise InvalidParameters("a federation needs at least 2 silos")
    if not 0 <= collusion < n:
        raise InvalidParameters("collusion bound c must be in [0, n)")
    if min_cohort < 2:
        raise InvalidParameters("min_cohort must be at least 2")
    if min_cohort > n:
        raise InvalidParameters(f"min_cohort {min_cohort} exceeds the {n} silos in the federation")
    if not threshold > (n + collusion) / 2:
        raise InvalidParameters(
            f"threshold {threshold} is unsafe for n={n}, c={collusion}: need t > (n + c)/2, "
            f"i.e. t >= {minimum_threshold(n, collusion)}"
        )
    if threshold > n:
        raise InvalidParameters(f"threshold {threshold} exceeds the {n} silos")


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Everything the silos must agree on for one round (DESIGN 4.1, stage 0).

    Attributes:
        federation: federation id (also the roster's).
        round: round number in [0, 2^32) (a uint32 on the wire).
        model_hash: SHA-256 of the global model the round starts from.
        vector_length: number of uint32 coordinates each silo submits.
        quantizer: public clipping and quantization parameters.
        n: number of silos on the roster.
        threshold: Shamir threshold t.
        collusion: number of silos the server may collude with, c.
        min_cohort: fewest contributions a released sum may have.
        silo_dp_hash: digest of the silo-level distributed-DP plan the round runs with
            (``dp.distributed.DistributedDPPlan.digest``), empty without silo-level DP. Each silo sets the
            digest of the plan it derived itself, the server that of its own plan.
        graph_degree: 0 for the full graph (Bonawitz); else the even degree k of the SecAgg+ Harary graph
            (:mod:`secagg.masking.graph`), and ``threshold`` is then the threshold of each closed neighbourhood
            of k + 1 silos.

    Notes:
        ``silo_dp_hash`` is part of :meth:`params_hash`, hence of every advertisement signature and of the
        session id: a coordinator that shows one silo a different silo-level DP plan than the others (a split
        view, e.g. fewer noise shares or another scale) makes that silo's signatures fail everywhere else, and
        the round cannot complete with it (DESIGN 6).
    """

    federation: str
    round: int
    model_hash: bytes
    vector_length: int
    quantizer: Quantizer
    n: int
    threshold: int
    collusion: int
    min_cohort: int
    silo_dp_hash: bytes = b""
    graph_degree: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.round < 2**32:
            raise InvalidParameters("round must be in [0, 2^32)")
        if len(self.model_hash) != 32:
            raise InvalidParameters("model_hash must be a SHA-256 digest")
        if self.vector_length < 1:
            raise InvalidParameters("vector_length must be >= 1")
        if len(self.silo_dp_hash) not in (0, 32):
            raise InvalidParameters("silo_dp_hash must be empty or a SHA-256 digest")
        if self.quantizer.max_silos < self.n:
            raise InvalidParameters("quantizer.max_silos is smaller than the federation")
        if self.graph_degree == 0:
            check_threshold(
                n=self.n,
                threshold=self.threshold,
                collusion=self.collusion,
                min_cohort=self.min_cohort,
            )
        else:
            # the per-neighbourhood rule; the threshold that resists c colluders is the parameter function's
            check_threshold(
                n=self.n, threshold=self.n, collusion=self.collusion, min_cohort=self.min_cohort
            )
            check_graph_shape(n=self.n, degree=self.graph_degree, threshold=self.threshold)

    @property
    def required_survivors(self) -> int:
        """Fewest silos that must survive to the end: max(t, min_cohort)."""
        return max(self.threshold, self.min_cohort)

    @property
    def local_required(self) -> int:
        """Fewest members of one silo's closed neighbourhood that must remain: ``required_survivors`` on the full
        graph, t on a SecAgg+ graph (``min_cohort`` counts the whole cohort, not one neighbourhood)."""
        return self.required_survivors if self.graph_degree == 0 else self.threshold

    def params_hash(self) -> bytes:
        """SHA-256 over every parameter except the model hash: signed into each advertisement.

        The silo-level DP plan's digest follows when there is one, then the graph's label and degree when the
        SecAgg+ graph is on; a full-graph round without silo-level DP hashes exactly as before these fields
        existed (the typed encoding is injective either way: a digest is bytes, the label a string).
        """
        q = self.quantizer
        fields: list[bytes | str | int] = [
            PROTOCOL_VERSION,
            self.federation,
            self.round,
            self.vector_length,
            repr(float(q.clip)),
            q.bits,
            q.max_silos,
            self.n,
            self.threshold,
            self.collusion,
            self.min_cohort,
        ]
        if self.silo_dp_hash:
            fields.append(self.silo_dp_hash)
        if self.graph_degree:
            fields += ["secaggplus-harary", self.graph_degree]
        return hashlib.sha256(encode_fields(*fields)).digest()
