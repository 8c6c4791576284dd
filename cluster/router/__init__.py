"""The router: one OpenAI-compatible endpoint in front of the worker agents."""
