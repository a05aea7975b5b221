"""Time `invoke guest.build` (warm golden-image cache) against `xen-create-image`, same spec, one run.

    .venv/bin/python bench/guest.py [--profile debian-12] [--keep]

Both make a guest with a 10G disk and 1G swap as sparse files (dir storage), 1024M, 2 vCPUs,
192.0.2.0/28 addressing, and do not start it. xen-create-image debootstraps the same release
from the same mirror (the machine's apt sources, as the golden image), so this is the lab's old
way against xenlab's. Everything goes under a fresh temporary directory (--output for
xen-tools' cfg, --root for xenlab's); nothing is started. The golden image is built first if
the cache lacks it (not timed). xen-create-image's debootstrap takes minutes: it runs once.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import ImagesConfig  # noqa: E402
from pipeline.guest import image  # noqa: E402

RELEASES = {"debian-12": "bookworm", "ubuntu-18.04": "bionic"}


def timed(argv, **kwargs) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(
            f"{argv[0]} ... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="debian-12", choices=sorted(RELEASES))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    images = ImagesConfig()
    golden = image.ensure(args.profile, images, say=print)  # warm the cache; not timed
    mirror = image.mirrors_for(image.profile_of(args.profile), images).main
    work = Path(tempfile.mkdtemp(prefix="xenlab-bench-guest-"))
    try:
        key = work / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        site = work / "site.yaml"
        with open(str(site), "w") as fh:
            YAML().dump(
                {
                    "host": {"subnet": "192.0.2.0/28", "storage": {"kind": "dir", "dir": str(work / "xenlab")}},
                    "guests": {
                        "bench-xl": {
                            "memory": "1024M", "vcpus": 2, "disk": "10G", "swap": "1G",
                            "profile": args.profile, "ip": "192.0.2.4",
                            "ssh_authorized_keys": [key.with_suffix(".pub").read_text().strip()],
                        }
                    },
                },
                fh,
            )  # fmt: skip
        root = work / "root"
        root.mkdir()
        xenlab = timed(
            [str(REPO / ".venv/bin/invoke"), "-f", str(site), "guest.build", "--name", "bench-xl",
             "--root", str(root), "--no-start"],
            cwd=str(REPO),
        )  # fmt: skip
        out = work / "xen-tools"
        out.mkdir()
        xen_tools = timed(
            ["xen-create-image", "--hostname=bench-xt", f"--dir={out}", "--size=10G", "--swap=1G",
             "--memory=1024M", "--vcpus=2", "--fs=ext4", "--image=sparse",
             f"--dist={RELEASES[args.profile]}", f"--mirror={mirror}", "--install-method=debootstrap",
             "--ip=192.0.2.5", "--netmask=255.255.255.240", "--gateway=192.0.2.1",
             "--pygrub", f"--output={out}", "--nohosts", "--genpass=1"],
        )  # fmt: skip
        print(
            f"golden image: {golden.distribution} ({golden.key}, cache {'warm' if golden.reused else 'built now'})"
        )
        print(f"invoke guest.build (warm image cache): {xenlab:7.1f} s")
        print(f"xen-create-image (debootstrap):        {xen_tools:7.1f} s")
        print(
            f"ratio xenlab / xen-create-image:       {xenlab / xen_tools:7.3f}  ({xen_tools / xenlab:.1f}x faster)"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(str(work), ignore_errors=True)


if __name__ == "__main__":
    main()
