"""spamops shared runtime: Kafka wiring, dead letters, settings, JSON logs, metrics"""
