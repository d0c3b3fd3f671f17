"""`autoannotator bench`: label quality per dollar and speed, side by side with the baselines."""
