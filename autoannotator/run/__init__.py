"""The run directory's only owner: its paths, run.json (the plan), the row store, the answer cache and
ledger, checkpoints, the report, the labelled output and the Label Studio files."""
