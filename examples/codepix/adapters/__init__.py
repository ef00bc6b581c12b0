"""Adapters: SQLAlchemy persistence (driven), gRPC, Kafka and CLI (driving)."""
