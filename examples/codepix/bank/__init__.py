"""The bank application: one program, run as several banks (BBX 001, CTD 002, ...).

Its own small hexagon: `domain` (accounts' money rules, the transfer's
statuses), `application` (use cases) over `ports` (Protocols), and
`adapters` (SQL with outbox + inbox, CodePix's gRPC client, the web pages and
JSON API). `service.BankNode` wires one bank; `process` runs it as
``python -m examples.codepix bank --code 001``.
"""
