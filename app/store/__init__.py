"""The database: engine and sessions, the ORM models, COPY helpers. No job logic."""
