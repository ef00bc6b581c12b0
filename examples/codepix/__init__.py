"""CodePix: a Pix-style transfer hub between fictitious banks, built the way it should be.

Key registration and lookup are synchronous (gRPC); transfers are asynchronous
(Kafka) and are never lost: every state change and the message announcing it
commit together (transactional outbox), every incoming message is applied once
(inbox), and poison messages are dead-lettered with the reason.

Layout (hexagonal): `domain` (rules, no I/O), `application` (use cases and the
ports they need), `adapters` (SQLAlchemy, gRPC, Kafka, CLI). The banks are one
more application in `bank` (BBX and CTD are the same code), `demo` runs
everything in one process, and `catalogue` declares every message. Run it with
``python -m examples.codepix --help``; see ``docs/examples/codepix.md``.
"""
