"""Deploying the chosen SLMs: the generated deployment code, the probe, and the proxy that talks to
the sandboxed worker."""
