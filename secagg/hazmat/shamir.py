"""Shamir t-of-n secret sharing of 32-byte secrets over the Mersenne prime field GF(2^521 - 1), and robust
reconstruction (Reed-Solomon decoding) when some shares are wrong.

Notes:
    - One 32-byte secret fits in one field element (2^256 < p), so a share is one 66-byte number and
      reconstruction is one Lagrange interpolation at 0 (Shamir 1979).
    - Coefficients are drawn uniformly by rejection sampling from ``rng`` (``os.urandom`` by default); reducing
      a wider random integer mod p would bias them.
    - x-coordinates are roster indices >= 1, never 0 (x = 0 would be the secret itself).
    - Lagrange coefficients at 0 depend only on the set of x-coordinates; they are cached per x-set because the
      server reconstructs many secrets from the same survivors.
    - Shamir shares of one secret are a Reed-Solomon codeword (McEliece and Sarwate 1981): k shares with
      threshold t lie on one polynomial of degree < t. :func:`check_consistent` tests that for many secrets at
      once with one random linear combination (a wrong share survives it with probability <= 2^-128), and
      :func:`decode` finds the polynomial despite wrong shares: Gao's decoder ("A new algorithm for decoding
      Reed-Solomon codes", 2003) corrects up to floor((k - t) / 2) of them in O(k^2) field operations, and a
      bounded search over t-subsets goes further, up to k - t, when the caller can recognise the right secret
      (``accept``: a commitment or a public key).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from secagg.errors import InvalidParameters, ProtocolViolation
from secagg.hazmat.keys import RandomSource

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "Decoding",
    "check_consistent",
    "decode",
    "reconstruct",
    "split",
]

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66
_COMBINER_BYTES = 16  # random 128-bit coefficients of check_consistent's linear combination

Polynomial = list[
    int
]  # coefficients, constant term first, no trailing zeros (the zero polynomial is [])


def _random_element(rng: RandomSource) -> int:
    while True:
        value = int.from_bytes(rng(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value


def split(
    secret: bytes, *, threshold: int, xs: Sequence[int], rng: RandomSource = os.urandom
) -> dict[int, bytes]:
    """Split ``secret`` into shares at ``xs``; any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise InvalidParameters("Shamir secrets are exactly 32 bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise InvalidParameters("x-coordinates must be distinct and >= 1")
    if not 1 <= threshold <= len(xs):
        raise InvalidParameters("threshold must be between 1 and the number of shares")
    coefficients = [int.from_bytes(secret, "big")] + [
        _random_element(rng) for _ in range(threshold - 1)
    ]
    shares: dict[int, bytes] = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_lagrange_at_zero_uncached(xs))


def _element(share: bytes) -> int:
    if len(share) != SHARE_BYTES or (y := int.from_bytes(share, "big")) >= PRIME:
        raise ProtocolViolation("malformed Shamir share")
    return y


def _secret(value: int) -> bytes | None:
    """The 32-byte secret a field element encodes, or ``None`` when it is too large to be one."""
    return None if value >> (8 * SECRET_BYTES) else value.to_bytes(SECRET_BYTES, "big")


def reconstruct(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """Reconstruct the secret from at least ``threshold`` shares (uses the first ``threshold`` by x).

    The other shares are not looked at: a wrong share among the first ``threshold`` yields a wrong secret, or
    this error. Use :func:`check_consistent` and :func:`decode` where shares may be wrong.

    Raises:
        InvalidParameters: fewer than ``threshold`` shares.
        ProtocolViolation: a share is malformed, or the shares do not encode a 32-byte secret (tampering).
    """
    if len(shares) < threshold:
        raise InvalidParameters(f"need {threshold} shares, got {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    value = 0
    for x, coefficient in zip(xs, _lagrange_at_zero(xs), strict=True):
        value = (value + _element(shares[x]) * coefficient) % PRIME
    secret = _secret(value)
    if secret is None:
        raise ProtocolViolation("Shamir shares are inconsistent")
    return secret


# Polynomial arithmetic over GF(p) ----------------------------------------------------------------------------
def _trim(p: Polynomial) -> Polynomial:
    while p and p[-1] == 0:
        p.pop()
    return p


def _evaluate(p: Polynomial, x: int) -> int:
    y = 0
    for c in reversed(p):
        y = (y * x + c) % PRIME
    return y


def _subtract(a: Polynomial, b: Polynomial) -> Polynomial:
    out = list(a) + [0] * (len(b) - len(a))
    for i, c in enumerate(b):
        out[i] = (out[i] - c) % PRIME
    return _trim(out)


def _multiply(a: Polynomial, b: Polynomial) -> Polynomial:
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, ca in enumerate(a):
        if ca:
            for j, cb in enumerate(b):
                out[i + j] += ca * cb
    return _trim([c % PRIME for c in out])


def _divide(a: Polynomial, b: Polynomial) -> tuple[Polynomial, Polynomial]:
    """Quotient and remainder of ``a`` by the non-zero polynomial ``b``."""
    remainder = list(a)
    if len(remainder) < len(b):
        return [], remainder
    inverse_lead = pow(b[-1], -1, PRIME)
    quotient = [0] * (len(remainder) - len(b) + 1)
    for shift in range(len(quotient) - 1, -1, -1):
        c = remainder[shift + len(b) - 1] * inverse_lead % PRIME
        quotient[shift] = c
        if c:
            for j, cb in enumerate(b):
                remainder[shift + j] = (remainder[shift + j] - c * cb) % PRIME
    return _trim(quotient), _trim(remainder[: len(b) - 1])


def _invert_all(values: Sequence[int]) -> list[int]:
    """Inverses of non-zero field elements with one modular inversion (Montgomery's trick)."""
    prefix, running = [], 1
    for v in values:
        prefix.append(running)
        running = running * v % PRIME
    inverse = pow(running, -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return out


def _vanishing(xs: Sequence[int]) -> Polynomial:
    """prod (X - x) over ``xs``."""
    p = [1]
    for x in xs:
        shifted = [0, *p]
        for i, c in enumerate(p):
            shifted[i] = (shifted[i] - x * c) % PRIME
        p = shifted
    return p


def _interpolate(xs: Sequence[int], ys: Sequence[int]) -> Polynomial:
    """The polynomial of degree < len(xs) through the points (Lagrange, O(len(xs)^2))."""
    master = _vanishing(xs)
    denominators = []
    for i, xi in enumerate(xs):
        d = 1
        for j, xj in enumerate(xs):
            if i != j:
                d = d * (xi - xj) % PRIME
        denominators.append(d)
    out = [0] * len(xs)
    for xi, yi, wi in zip(xs, ys, _invert_all(denominators), strict=True):
        scale = yi * wi % PRIME
        if not scale:
            continue
        carry = 0  # synthetic division of master by (X - xi), highest coefficient first
        for d in range(len(xs), 0, -1):
            carry = (master[d] + carry * xi) % PRIME
            out[d - 1] += scale * carry
    return _trim([c % PRIME for c in out])


def _points(shares: Mapping[int, bytes]) -> tuple[list[int], list[int]]:
    xs = sorted(shares)
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise InvalidParameters("x-coordinates must be distinct and >= 1")
    return xs, [_element(shares[x]) for x in xs]


def _off(p: Polynomial, xs: Sequence[int], ys: Sequence[int]) -> frozenset[int]:
    return frozenset(x for x, y in zip(xs, ys, strict=True) if _evaluate(p, x) != y)


# Checks and decoding ---------------------------------------------------------------------------------------
def check_consistent(
    share_sets: Sequence[Mapping[int, bytes]], *, threshold: int, rng: RandomSource = os.urandom
) -> None:
    """Check that every set of shares lies on one polynomial of degree < ``threshold`` (its own).

    All sets must hold shares at the same x-coordinates. With more than one set, it checks one random linear
    combination of them (128-bit coefficients from ``rng``), so the cost is about one multiplication per share
    plus one interpolation, however many sets there are.

    Raises:
        InvalidParameters: the sets do not share their x-coordinates, or ``threshold`` < 1.
        ProtocolViolation: some set is not on a polynomial of degree < ``threshold`` (a share is wrong), or a
            share is malformed. A wrong share goes unnoticed with probability at most 2^-128.
    """
    if threshold < 1:
        raise InvalidParameters("threshold must be >= 1")
    if not share_sets:
        return
    xs, combined = _points(share_sets[0])
    if any(sorted(s) != xs for s in share_sets):
        raise InvalidParameters("every set of shares must be at the same x-coordinates")
    if len(share_sets) > 1:
        weights = [int.from_bytes(rng(_COMBINER_BYTES), "big") for _ in share_sets]
        combined = [0] * len(xs)
        for weight, shares in zip(weights, share_sets, strict=True):
            for i, x in enumerate(xs):
                combined[i] += weight * _element(shares[x])
        combined = [c % PRIME for c in combined]
    if len(xs) <= threshold:
        return  # any t points lie on a polynomial of degree < t
    p = _interpolate(xs[:threshold], combined[:threshold])
    if any(_evaluate(p, x) != y for x, y in zip(xs[threshold:], combined[threshold:], strict=True)):
        raise ProtocolViolation("Shamir shares are not all on one polynomial of degree < threshold")


@dataclass(frozen=True)
class Decoding:
    """The result of :func:`decode`.

    Attributes:
        secret: the accepted secret.
        errors: x-coordinates whose shares are not on the polynomial that yields it.
        agreeing: how many shares are on that polynomial.
        subsets: how many t-subsets the bounded search tried (0 when Gao's decoder sufficed).
    """

    secret: bytes = field(repr=False)
    errors: frozenset[int]
    agreeing: int
    subsets: int


def decode(
    shares: Mapping[int, bytes],
    *,
    threshold: int,
    accept: Callable[[bytes], bool],
    max_subsets: int = 4096,
) -> Decoding:
    """Find the polynomial of degree < ``threshold`` through the most shares whose secret ``accept`` approves.

    First Gao's decoder, which finds the unique polynomial within floor((k - t) / 2) wrong shares of k; then,
    if that yields nothing ``accept`` approves, t-subsets of the first t + e shares for e = radius + 1, ... up
    to k - t (at most ``max_subsets`` subsets in all), returning the approved polynomial that disagrees with
    the fewest shares (the explanation with the fewest liars).

    Notes:
        With e wrong shares and a secret ``accept`` pins down exactly (a hash commitment, or a canonical key
        checked against its public key), the polynomial returned is the dealt one, and ``errors`` are exactly
        the wrong shares, whenever e <= floor((k - t + 1) / 2): another polynomial with the same secret agrees
        with the dealt one on at most t - 2 other points, so it disagrees with at least k - t + 2 - e shares.
        Beyond that, up to k - t, wrong shares that were made independently (garbage, a shift) are still
        found (any other fit is a 2^-521 coincidence), but shares that colluding holders crafted together
        along a polynomial vanishing at 0 can fit a second polynomial with the same secret and no more
        disagreements; the secret is still right, the blame may not be. A tie between two such fits raises
        rather than guess; a false fit with strictly fewer disagreements (possible only beyond that bound) is
        indistinguishable from the truth for anyone holding these shares. k = t leaves nothing to decode with.

    Raises:
        InvalidParameters: fewer than ``threshold`` shares, or bad x-coordinates.
        ProtocolViolation: a share is malformed; no polynomial through at least ``threshold`` shares has a
            secret ``accept`` approves within the search bound; or two such polynomials fit equally well.
    """
    xs, ys = _points(shares)
    k, t = len(xs), threshold
    if not 1 <= t <= k:
        raise InvalidParameters(f"need {t} shares, got {k}")

    def approved(constant: int) -> bytes | None:
        secret = _secret(constant)
        return secret if secret is not None and accept(secret) else None

    radius = (k - t) // 2
    found = _gao(xs, ys, t)
    if found is not None and len(errors := _off(found, xs, ys)) <= radius:
        # within the radius the fit is unique: two would agree on >= t shares, hence be one polynomial
        secret = approved(found[0] if found else 0)
        if secret is not None:
            return Decoding(secret, errors, k - len(errors), 0)
        if not errors:
            # all k shares are on one polynomial: any other polynomial through t of them is the same one
            raise ProtocolViolation(
                "all shares agree on one secret, and it is not the expected one"
            )
    # wrong shares -> secret, for every approved polynomial the search finds
    fits: dict[frozenset[int], bytes] = {}
    tried = 0
    for e in range(radius + 1, k - t + 1):
        # an explanation with e wrong shares leaves t right ones among the first t + e; a subset inside the
        # previous window was tried already, so later windows only try subsets with their new last share
        if e == radius + 1:
            subsets: Iterable[tuple[int, ...]] = itertools.combinations(range(t + e), t)
        else:
            last = t + e - 1
            subsets = ((*c, last) for c in itertools.combinations(range(last), t - 1))
        for subset in subsets:
            if tried >= max_subsets:
                raise ProtocolViolation(
                    f"no expected secret found within {max_subsets} subsets of the shares"
                )
            tried += 1
            sub_x = [xs[i] for i in subset]
            sub_y = [ys[i] for i in subset]
            constant = sum(
                y * c for y, c in zip(sub_y, _lagrange_at_zero_uncached(sub_x), strict=True)
            )
            secret = approved(constant % PRIME)
            if secret is None:
                continue
            fits.setdefault(_off(_interpolate(sub_x, sub_y), xs, ys), secret)
        fewest = [errors for errors in fits if len(errors) <= e]
        if len(fewest) > 1:
            # every fit with <= e wrong shares is found by this level; two of them leave the blame undecided
            raise ProtocolViolation(
                "the shares fit more than one polynomial with the expected secret equally well "
                "(colluding holders): which of them are wrong cannot be told"
            )
        if fewest:
            return Decoding(fits[fewest[0]], fewest[0], k - len(fewest[0]), tried)
    raise ProtocolViolation(
        "no polynomial through at least threshold shares has the expected secret"
    )


def _lagrange_at_zero_uncached(xs: Sequence[int]) -> list[int]:
    """Lagrange coefficients at 0, with one inversion; the search calls this directly (its many x-sets would
    flush the cache)."""
    numerators, denominators = [], []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        numerators.append(numerator)
        denominators.append(denominator)
    return [n * d % PRIME for n, d in zip(numerators, _invert_all(denominators), strict=True)]


def _gao(xs: Sequence[int], ys: Sequence[int], t: int) -> Polynomial | None:
    """Gao's Reed-Solomon decoder: the polynomial of degree < t within floor((k - t)/2) errors, or None."""
    k = len(xs)
    r_prev, r = _vanishing(xs), _interpolate(xs, ys)
    v_prev, v = [], [1]
    # partial extended Euclid until the remainder's degree drops below (k + t) / 2
    while 2 * (len(r) - 1) >= k + t:
        quotient, remainder = _divide(r_prev, r)
        r_prev, r = r, remainder
        v_prev, v = v, _subtract(v_prev, _multiply(quotient, v))
    if not v:
        return None
    f, remainder = _divide(r, v)
    if remainder or len(f) > t:
        return None
    return f
