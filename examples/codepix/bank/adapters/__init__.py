"""The bank's adapters: ``sql`` (driven), ``codepix_grpc`` (driven), ``web`` (driving).

Imported by module, not re-exported here, so the web adapter (FastAPI,
Jinja2) loads only when a bank serves pages.
"""
