"""Whether one more generation may be queued: the queue bound and the per-user caps, one rule for every
backend (each counts its own jobs: a thread's queue, a child's mirror, every bot's records on NATS)."""

from __future__ import annotations

from iris.config import ManagerConfig
from iris.errors import QueueFull, UserLimitReached


def admit(config: ManagerConfig, queued: int, owners_active: int, max_queued_per_user: int | None) -> None:
    """Raise QueueFull or UserLimitReached, or return: `queued` jobs wait now, `owners_active` of the
    asker's are queued or running; `max_queued_per_user` overrides the config's (a server's setting)."""
    if queued >= config.max_queue:
        raise QueueFull(queued)
    cap = config.max_queued_per_user if max_queued_per_user is None else max_queued_per_user
    limit = cap + config.max_running_per_user
    if owners_active >= limit:
        n = owners_active
        raise UserLimitReached(
            f"you already have {n} generation{'s' * (n > 1)} queued or running "
            f"(the limit is {limit}); wait for one to finish or cancel it"
        )
