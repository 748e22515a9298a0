"""Team-draft interleaving (2 rankings) and team-draft multileaving (3 or more), and how clicks are credited.

Team draft (Radlinski, Kurup and Joachims, CIKM 2008) builds one list from two
rankings in rounds: a coin decides which team picks first, then each team adds
its highest-ranked document not already in the list. Team-draft multileaving
(Schuth et al., CIKM 2014) is the same with a random order of all teams in each
round. A click credits the team that placed the clicked document; per query,
team ``i`` beats team ``j`` when it got more clicks. Under random clicking the
expected credit is equal for every team, which is what makes the comparison
unbiased; it is also why the draw must be random per user (see
:mod:`cascade.experiments.assignment`).
"""

from __future__ import annotations

import random
from typing import Sequence


def team_draft(rankings: Sequence[Sequence[str]], k: int, seed: int) -> tuple[list[str], list[int]]:
    """Up to ``k`` documents from ``rankings`` mixed by team draft, and the team (index) of each position.

    A team that has nothing new left to add sits the rest of the rounds out; the
    list ends early only when every team is exhausted.
    """
    rng = random.Random(seed)
    n = len(rankings)
    out: list[str] = []
    teams: list[int] = []
    seen: set[str] = set()
    cursor = [0] * n
    live = list(range(n))
    while len(out) < k and live:
        order = list(live)
        rng.shuffle(order)
        for t in order:
            if len(out) >= k:
                break
            r = rankings[t]
            while cursor[t] < len(r) and r[cursor[t]] in seen:
                cursor[t] += 1
            if cursor[t] >= len(r):
                live.remove(t)
                continue
            doc = r[cursor[t]]
            seen.add(doc)
            out.append(doc)
            teams.append(t)
    return out, teams


def credit(teams: Sequence[int], clicked_positions: Sequence[int], n_teams: int) -> list[int]:
    """Clicks per team, from the 0-based positions clicked in an interleaved list."""
    out = [0] * n_teams
    for p in clicked_positions:
        if 0 <= p < len(teams):
            out[teams[p]] += 1
    return out


def outcome(clicks: Sequence[int], i: int, j: int) -> int:
    """+1 when team ``i`` got more clicks than ``j``, -1 when fewer, 0 for a tie."""
    return (clicks[i] > clicks[j]) - (clicks[i] < clicks[j])
