"""The command line (typer): label, plan, bench, runs, chat, and their terminal rendering.

It imports the library; nothing in the library imports it (tests/test_layout.py keeps it so).
"""
