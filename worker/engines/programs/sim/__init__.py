"""The `sim` engine (server.py): an OpenAI-compatible server whose answers cost time like a real engine's."""
