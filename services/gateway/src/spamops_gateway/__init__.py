"""spamops gateway: HTTP API -> emails.inbox, answered from emails.verdicts"""
