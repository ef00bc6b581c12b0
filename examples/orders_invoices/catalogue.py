"""The message catalogue, derived from what the services wire.

Producer and consumers of each event come from the services' own
declarations (``emits`` and the ``@handles`` marks the consumer dispatches
on), the topic from the router the relays publish with, the schema from the
payload model producers build and consumers validate. The docs render it
(``<!-- message-catalogue: examples.orders_invoices.catalogue -->``).
"""

from __future__ import annotations

import inspect

from examples._catalogue import EventSpec
from examples.orders_invoices.deployment import SERVICES
from examples.orders_invoices.events import EVENTS, Event, topic_of


def _summary(event: type[Event]) -> str:
    return (inspect.getdoc(event) or "").split("\n\n")[0].replace("\n", " ")


def catalogue() -> tuple[EventSpec, ...]:
    """Every event type: topic, producing service, consuming services, payload schema."""
    specs = []
    for event in EVENTS.values():
        producers = [service.name for service in SERVICES if event in service.emits]
        if len(producers) != 1:
            raise ValueError(f"{event.type} must have exactly one producer, has {producers}")
        specs.append(
            EventSpec(
                type=event.type,
                topic=topic_of(event),
                producer=producers[0],
                consumers=tuple(s.name for s in SERVICES if event in s.consumes),
                payload=event,
                summary=_summary(event),
            )
        )
    return tuple(specs)
