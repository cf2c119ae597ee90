"""Prompt extension: the system prompts (``system``) and the extenders that run a language model (``extend``)."""
