"""Time `invoke image.build` cold (--rebuild) and warm (cache hit) against `debootstrap` alone.

    .venv/bin/python bench/image.py [--profile debian-12] [--warm-rounds 5] [--skip-cold]

Cold rebuilds the profile's entry in images.cache_dir (it replaces the cached tree, as
`--rebuild` does); debootstrap runs into a temporary directory that is removed. Mirrors as the
task uses them (config, else this machine's apt sources). Prints wall-clock seconds.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def timed(argv, **kwargs) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="debian-12")
    parser.add_argument("--warm-rounds", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()

    from pipeline import ubuntu_keyring
    from pipeline.config import ImagesConfig
    from pipeline.guest import image

    spec = image.profile_of(args.profile)
    mirrors = image.mirrors_for(spec, ImagesConfig())
    build = [sys.executable, "-m", "invoke", "image.build", "--profile", args.profile, "-q"]

    cold = None if args.skip_cold else timed(build + ["--rebuild"], cwd=str(REPO))
    warm = [timed(build, cwd=str(REPO)) for _ in range(args.warm_rounds)]

    argv = ["debootstrap", "--variant=minbase", spec.release]
    if spec.distro == "ubuntu":
        keyring = ubuntu_keyring.archive_keyring(
            Path(ImagesConfig().cache_dir) / ".keyrings", mirrors.main
        )
        argv.insert(1, f"--keyring={keyring}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-debootstrap-"))
    try:
        alone = timed(argv + [str(tmp / "root"), mirrors.main])
    finally:
        shutil.rmtree(str(tmp), ignore_errors=True)

    print(f"profile {args.profile} ({spec.distribution})")
    if cold is not None:
        print(f"image.build cold (--rebuild):  {cold:7.1f} s")
    print(f"image.build warm (median of {len(warm)}): {statistics.median(warm):7.2f} s")
    print(f"debootstrap --variant=minbase alone: {alone:7.1f} s")
    if cold is not None:
        print(f"warm / debootstrap alone: {statistics.median(warm) / alone:.3f}")


if __name__ == "__main__":
    main()
