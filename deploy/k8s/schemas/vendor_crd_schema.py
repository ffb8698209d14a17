"""Write one version's ``openAPIV3Schema`` of a CustomResourceDefinition as JSON, for the tests to validate with.

Usage (README.md lists the sources)::

    curl -sL URL_OF_CRD_YAML | python deploy/k8s/schemas/vendor_crd_schema.py --version v1 > KIND-GROUP-VERSION.json

``description`` fields are dropped (they carry no constraint and most of the size); everything else is kept as
the CRD states it. Needs PyYAML.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` key removed, recursively."""
    if isinstance(node, dict):
        return {key: without_descriptions(value) for key, value in node.items() if key != "description"}
    if isinstance(node, list):
        return [without_descriptions(value) for value in node]
    return node


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in ``crd``, without descriptions.

    Raises:
        SystemExit: the CRD has no such version.
    """
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return without_descriptions(entry["schema"]["openAPIV3Schema"])
    names = [entry["name"] for entry in crd["spec"]["versions"]]
    raise SystemExit(f"{crd['metadata']['name']} has no version {version!r} (it has {names})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the CRD version to keep, e.g. v1 or v1beta1")
    args = parser.parse_args()
    crd = yaml.safe_load(sys.stdin)
    json.dump(crd_schema(crd, args.version), sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
