"""The round's worker side: the `promote` job handler.

The chain itself — train_reward → train_ppo → promote → sample — is queued by
`enqueue_round` (app/runs/round_service.py, re-exported here), which needs no torch.
"""

from __future__ import annotations

from typing import Any

from app.runs.round_service import Round, RoundError, enqueue_round, promote

__all__ = ["Round", "RoundError", "enqueue_round", "promote", "promote_job"]


def promote_job(ctx: Any) -> dict[str, Any]:
    """The `promote` job handler."""
    ctx.progress(0.0, "promoting the new policy")
    with ctx.session() as s:
        result = promote(session=s, params=dict(ctx.params), job_id=ctx.job_id)
    ctx.log(
        f"policy {result['policy_version_id']} is active"
        + (f"; reward model {result['reward_version_id']} is active" if "reward_version_id" in result else "")
        + (f"; tasks will mix it with policy {result['mixed_with']}" if result["mixed_with"] else "")
    )
    ctx.progress(1.0, f"policy {result['policy_version_id']} promoted")
    return result
