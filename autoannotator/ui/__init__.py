"""Terminal output: progress bars and live counters (rich)."""
