"""Outbound webhooks: tenants' endpoints, their secrets, safe URLs, and the deliveries' store.

Deliveries are recorded by app.jobs in the transaction of the state change that causes
them (app.jobs.webhooks); workers.webhooks sends them after commit, signed by the
Standard Webhooks scheme.
"""

from __future__ import annotations

#: Events an endpoint may ask for.
EVENTS = ("job.succeeded", "job.dead", "job.cancelled", "batch.completed")
