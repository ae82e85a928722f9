"""Train after admission (DESIGN 4.4), through the masking :class:`~coordinator.sdk.masking.Silo`'s public API.

The scripted server of :mod:`tests.coordinator.sdk.fakes` plays a coordinator with two real peers (``silo-b``,
``silo-c``: real :class:`secagg.SecAggClient` roles with their roster keys), so the silo under test runs its
real advertise and share-keys stages. The training function records each call: a silo that the coordinator
leaves out before the cohort is fixed must never have been asked to train, i.e. spent no record-level budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.common import RoundStatus
from coordinator.errors import Aborted, NotFound, StageError
from coordinator.pki import ConsortiumPaths, load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.sdk import RoundContext, Silo
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    config_from_pb,
    share_to_pb,
)
from secagg import Roster, SecAggClient
from tests.coordinator.sdk.fakes import MODEL, SILO, Server, announced, connect

PEERS = ("silo-b", "silo-c")


class Peers:
    """The other two silos of the round, honest: they advertise, and share keys with everyone in U1."""

    def __init__(self, consortium: ConsortiumPaths, info: pb.RoundInfo) -> None:
        roster = Roster.loads(consortium.roster.read_text())
        config = config_from_pb(info)
        self.clients = {
            peer: SecAggClient(
                silo=peer,
                signing_key=load_ed25519_private(consortium.silos[peer].signing_key),
                roster=roster,
                config=config,
            )
            for peer in PEERS
        }
        self.ads = [advertisement_to_pb(c.advertise()) for c in self.clients.values()]
        self.shares: list[pb.EncryptedShare] = []

    def u1(self, advertised: list[pb.Advertisement]) -> pb.AdvertisementSet:
        """U1 = the silo's own advertisement and both peers'; the peers share keys over it."""
        everyone = [*advertised, *self.ads]
        for client in self.clients.values():
            sent = client.share_keys([advertisement_from_pb(a) for a in everyone])
            self.shares += [share_to_pb(s) for s in sent.shares if s.recipient == SILO]
        return pb.AdvertisementSet(advertisements=everyone)

    def without_own(self, advertised: list[pb.Advertisement]) -> pb.AdvertisementSet:
        """A U1 that leaves the silo out."""
        return pb.AdvertisementSet(advertisements=self.ads)

    def inbox(self, *, senders: tuple[str, ...] = PEERS) -> Callable[[pb.StageRequest], pb.Inbox]:
        def answer(request: pb.StageRequest) -> pb.Inbox:
            shares = [s for s in self.shares if s.sender in senders]
            return pb.Inbox(shares=shares)

        return answer


class Recorder:
    """A training function that records the rounds it was called for, and when (the server's call log)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rounds: list[int] = []

    def __call__(self, ctx: RoundContext) -> npt.NDArray[np.float64]:
        self.rounds.append(ctx.round)
        self.server.federation.log.append("train")
        return np.zeros(MODEL.shape[0])


def script(server: Server, consortium: ConsortiumPaths) -> Peers:
    info = announced(consortium)
    server.federation.rounds = [info]
    peers = Peers(consortium, info)
    server.federation.peers = peers.u1
    server.federation.inbox = peers.inbox()
    return peers


def test_an_admitted_silo_trains_after_the_inbox_and_before_its_upload(
    silo: Silo, server: Server, consortium: ConsortiumPaths
) -> None:
    """The positive control: with U2 = all three silos the silo trains, between the inbox and its upload."""
    script(server, consortium)
    server.federation.fail("GetSurvivors", Aborted("round 0 was aborted: scripted"))
    train = Recorder(server)
    (report,) = silo.run(train)
    assert train.rounds == [0]
    log = server.federation.log
    assert log.index("AdvertiseKeys") < log.index("GetInbox") < log.index("train")
    assert log.index("train") < log.index("UploadMaskedInput")
    # between the two it asks when the masked-input stage (its training included) closes
    assert log[log.index("GetInbox") + 1] == "GetRound" and server.federation.asked_after[-2:] == [
        0,
        1,
    ]
    assert report.status is RoundStatus.ABORTED and "scripted" in report.reason


def left_out_of_u1(server: Server, peers: Peers) -> None:
    server.federation.peers = peers.without_own


def left_out_of_u2(server: Server, peers: Peers) -> None:
    server.federation.fail("GetInbox", StageError(f"{SILO} is not in U2 of round 0"))


def inbox_below_the_threshold(server: Server, peers: Peers) -> None:
    server.federation.inbox = peers.inbox(senders=("silo-b",))


def inbox_naming_a_silo_outside_u1(server: Server, peers: Peers) -> None:
    answer = peers.inbox(senders=("silo-b",))

    def padded(request: pb.StageRequest) -> pb.Inbox:
        inbox = answer(request)
        inbox.shares.append(pb.EncryptedShare(sender="mallory", recipient=SILO, ciphertext=b"x"))
        return inbox

    server.federation.inbox = padded


def inbox_padded_with_a_share_that_does_not_decrypt(server: Server, peers: Peers) -> None:
    """A real U1 member's slot filled with bytes that are no share: counting senders would admit the silo."""
    answer = peers.inbox(senders=("silo-b",))

    def padded(request: pb.StageRequest) -> pb.Inbox:
        inbox = answer(request)
        fake = bytes(len(inbox.shares[0].ciphertext))  # the right length, but it does not decrypt
        inbox.shares.append(pb.EncryptedShare(sender="silo-c", recipient=SILO, ciphertext=fake))
        return inbox

    server.federation.inbox = padded


def aborted_before_admission(server: Server, peers: Peers) -> None:
    server.federation.fail("GetAdvertisements", Aborted("round 0 was aborted: scripted"))


@pytest.mark.parametrize(
    ("exclude", "reason"),
    [
        (left_out_of_u1, "refused: the server dropped or altered this silo's own advertisement"),
        (left_out_of_u2, "not in U2"),
        (inbox_below_the_threshold, "only 2 silos shared keys; the round needs 3"),
        (inbox_naming_a_silo_outside_u1, "refused: share from 'mallory', who is not in U1"),
        (
            inbox_padded_with_a_share_that_does_not_decrypt,
            "refused: share from silo-c does not decrypt for this silo",
        ),
        (aborted_before_admission, "scripted"),
    ],
)
def test_a_silo_excluded_before_admission_never_trains(
    silo: Silo,
    server: Server,
    consortium: ConsortiumPaths,
    exclude: Callable[[Server, Peers], None],
    reason: str,
) -> None:
    """Budget drain: the coordinator leaves the silo out before the cohort is fixed; it spent nothing."""
    exclude(server, script(server, consortium))
    train = Recorder(server)
    (report,) = silo.run(train)
    assert train.rounds == []
    assert report.status is RoundStatus.ABORTED and reason in report.reason
    assert server.federation.calls["UploadMaskedInput"] == 0


def test_a_refused_silo_waits_for_the_next_round_while_the_last_one_is_still_open(
    consortium: ConsortiumPaths, server: Server
) -> None:
    """After leaving a round early, GetRound answers NOT_FOUND until the next round opens: keep polling."""
    peers = script(server, consortium)
    inbox_below_the_threshold(server, peers)
    with connect(consortium, server) as client:
        runs = client.run(Recorder(server))
        next(runs)
        server.federation.fail("GetRound", NotFound("no round >= 1 is open yet"))
        assert list(runs) == []
    assert server.federation.asked_after == [0, 1, 1]
