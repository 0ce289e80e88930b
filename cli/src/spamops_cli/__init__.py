"""spamops command line: the local stack, ingestion and user commands"""
