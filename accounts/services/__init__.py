"""Writes for the accounts app, one module per entity (HackSoft style: <entity>_<action>)."""
