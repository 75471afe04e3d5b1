"""Storage: engine, sessions, declarative base, column types, migrations."""
