"""The A/B arm of a unit: a salted hash cut into share intervals (sticky, the same in every process and server).

This is the one home of the rule. It imports only the standard library because the router model runs it
inside the Triton server's own environment: ``write_router`` copies this file beside the router's model.py,
and ``relkd.serving.ab.traffic_split`` (offline) calls the same function, so an id lands in the same arm
offline, online, across restarts and across server instances.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping

# The paper's online A/B: 10% of traffic to the challenger, 10% to the champion (control); the rest is served
# by the champion and is not part of the experiment.
PAPER_SHARES = {"champion": 0.1, "challenger": 0.1}
REST = "unassigned"  # the arm name of traffic outside the experiment


def check_shares(shares: Mapping[str, float], rest: str = REST) -> dict[str, float]:
    """`shares` as a dict, or ValueError naming what is wrong with them."""
    shares = {str(k): float(v) for k, v in shares.items()}
    if any(v < 0 for v in shares.values()) or sum(shares.values()) > 1 + 1e-12:
        raise ValueError(f"shares must be >= 0 and sum to at most 1, got {shares}")
    if rest in shares:
        raise ValueError(f"the name for the rest of the traffic, {rest!r}, is also an arm in {list(shares)}")
    return shares


def unit_point(unit, salt: str) -> float:
    """sha256(salt, unit) as a number in [0, 1): uniform over units, independent across salts."""
    # A separator keeps (salt "a", unit "bc") apart from (salt "ab", unit "c").
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class Assigner:
    """Assigns units to arms for one experiment (salt) and set of shares: [0, 1) is cut into consecutive intervals,
    one per arm in name order, each as wide as its share; the rest of [0, 1) is `rest`."""

    def __init__(self, salt: str, shares: Mapping[str, float] | None = None, rest: str = REST):
        self.salt, self.rest = str(salt), rest
        self.shares = check_shares(PAPER_SHARES if shares is None else shares, rest)
        # Intervals in arm-name order, not the mapping's: the same shares read back from JSON (sorted keys) or
        # written in another order must cut [0, 1) the same way.
        self.names = sorted(self.shares)
        self.upper, total = [], 0.0
        for name in self.names:  # the same running sum as numpy's cumsum: identical cut points
            total += self.shares[name]
            self.upper.append(total)

    def __call__(self, unit) -> str:
        k = bisect_right(self.upper, unit_point(unit, self.salt))
        return self.names[k] if k < len(self.names) else self.rest

    def expected(self) -> dict[str, float]:
        """Each arm's share of units, the rest included (what a sample-ratio check compares with)."""
        return {**self.shares, self.rest: max(0.0, 1.0 - sum(self.shares.values()))}
