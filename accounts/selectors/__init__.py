"""Reads for the accounts app, one module per entity."""
