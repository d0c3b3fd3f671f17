"""Errors a user can act on: the CLI prints their message as one line, never a traceback."""


class UserError(Exception):
    """Bad input or configuration; the message says what to change."""


class LLMUnavailable(UserError):
    """The configured LLM endpoint cannot be reached or keeps failing."""
