"""The preference store: models, engine, queries and migrations. Imports neither selfplay nor workers."""
