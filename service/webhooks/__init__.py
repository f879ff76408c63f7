"""Signed webhooks (issue 19, items 1 and 4): endpoints as events, delivery from the log.

- ``domain``    the ``WebhookEndpoint`` aggregate and its events; the event types (pure)
- ``secrets``   ``whsec_`` secrets: generated, sealed for storage (AES-GCM under a key derived from
                the pepper), opened by the delivering process, Standard Webhooks signatures
- ``application`` the use cases (mixed into ``service.application.Keyledger``)
- ``safety``    where a delivery may go: https, no loopback/private/link-local/metadata address,
                checked on the address actually connected to
- ``delivery``  the deliverer: per-endpoint queues on a bounded pool, retries with backoff,
                the delivery log; runs in the scheduler process

The per-endpoint outbox is a projection of the log (``projections.webhooks``).
"""
