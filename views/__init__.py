"""What the command line shows: rich tables and progress for plans, profiles,
calibrations and training runs. Only ``cli`` imports these."""
