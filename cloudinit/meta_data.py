"""NoCloud meta-data: who the instance is (instance-id, local-hostname)."""

import hashlib
from typing import Dict


def build(name: str, *inputs: str) -> Dict[str, str]:
    """meta-data for guest `name`; the instance-id changes with `inputs` (the seed's other files).

    cloud-init runs its once-per-instance modules again only when the instance-id changes, so a
    rebuilt guest with a new seed is a new instance, and a reboot of the same one is not.
    """
    digest = hashlib.sha256("\0".join((name, *inputs)).encode()).hexdigest()[:12]
    return {"instance-id": f"{name}-{digest}", "local-hostname": name}
