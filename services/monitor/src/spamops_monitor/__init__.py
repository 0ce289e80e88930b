"""spamops monitor service: Evidently drift windows, live quality, DriftDetected"""
