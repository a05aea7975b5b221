"""The one error of the seed's parts: a tool they run (ssh-keygen, openssl) is missing or failed.

cloudinit/ is a leaf and knows nothing of the project's errors; its caller says what it means
(guest.build turns it into a failed run, with this message).
"""


class SeedError(Exception):
    """A seed part could not be made; the message names the tool and what it said."""
