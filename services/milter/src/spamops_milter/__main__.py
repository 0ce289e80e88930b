"""Entry point: ``python -m spamops_milter``.

Listens for the MTA on ``inet:<SPAMOPS_MILTER_PORT>@<SPAMOPS_HOST>`` (8890 by
default; ``SPAMOPS_MILTER_SOCKET`` for another socket) until SIGTERM or SIGINT.
Postfix: ``smtpd_milters = inet:127.0.0.1:8890`` and ``milter_default_action =
accept``, so mail flows on while the milter itself is down.
"""

import sys

from spamops_milter.app import main

if __name__ == "__main__":
    sys.exit(main())
