"""The deprecation campaign's jobs (plain functions) and their APScheduler wiring."""
