"""spamops inference service: emails.inbox -> features -> Triton -> emails.verdicts"""
