"""The store: database engine and sessions, the ORM schema, migrations, singleton leases."""
