"""The public surface of ``dp.distributed``: sorted ``__all__`` that resolves, one error root."""

from __future__ import annotations

import dp.distributed
from dp import errors


def test_all_is_sorted_isort_style_and_resolves() -> None:
    exported = list(dp.distributed.__all__)

    def key(item: str) -> tuple[int, str]:
        kind = 0 if item.isupper() else 1 if item[0].isupper() else 2
        return (kind, item)

    assert exported == sorted(exported, key=key)
    assert len(set(exported)) == len(exported)
    for item in exported:
        assert hasattr(dp.distributed, item), item


def test_distributed_errors_hang_under_privacy_error() -> None:
    for name in ("BitWidthTooSmall", "TooFewContributors", "RoundingFailed"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.DistributedDPError)
        assert issubclass(cls, errors.PrivacyError)
