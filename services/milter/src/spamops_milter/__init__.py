"""spamops milter: Postfix -> the gateway's classify path -> X-Spam-* headers, reject, quarantine"""
