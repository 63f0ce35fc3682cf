"""manager.backend: nats — bots and `iris worker` processes joined by NATS JetStream."""

from iris.service.nats.client import NatsManager
from iris.service.nats.worker import NatsWorker, run_worker

__all__ = ["NatsManager", "NatsWorker", "run_worker"]
