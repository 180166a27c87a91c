"""The daemon's stages: capture → inference → decision → events, and the service that runs them (DESIGN.md)."""
