"""Length buckets: a batch of sequences cut into forward calls that waste little on padding.

A padded forward costs about (rows × longest row) tokens. Real data has a long tail (HH-RLHF
dialogues: median 118 tokens, a tenth over 298, some at the 384 limit), so one padded call per
batch spends most of its time on padding. Sorted by length and cut where the padding saved is
worth more than one more call, the same sequences cost about their real tokens. Every
per-sequence result (a reward score, a token's loss) is the same as in one padded call, up to
float rounding: padding is masked out either way. Used by the reward model's and SFT's loops.
"""

from __future__ import annotations

from collections.abc import Sequence

# What one more forward call costs, in padded tokens. Generous on purpose: on a busy CPU each
# call's many small parallel regions wait for cores, so fewer calls win; 512 cuts a batch of 32
# HH-RLHF sequences (MiniLM, 384 limit) into 3-4 calls with about half the padded tokens.
CALL_COST_TOKENS = 512


def length_buckets(lengths: Sequence[int], *, call_cost: int | None = None) -> list[list[int]]:
    """Indices into `lengths`, cut into groups that minimise Σ (rows × longest + call_cost)
    (call_cost: CALL_COST_TOKENS unless given).

    Each group is a run of the sequences sorted by length (shortest first), so a group is padded
    only to its own longest. Exact (dynamic programming over the sorted order): O(n²) for n
    sequences, nothing next to one forward call for the batch sizes trained here.
    """
    per_call = CALL_COST_TOKENS if call_cost is None else call_cost
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] + [0] * n  # best[j]: the cheapest cut of the first j sorted sequences
    cut = [0] * (n + 1)  # cut[j]: where the last group of that cheapest cut starts
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + (j - i) * longest + per_call, i) for i in range(j))
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
