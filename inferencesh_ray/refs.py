"""App references as clients write them: `[namespace/]name[@version][:function]`.

Parsed the same way by the ingress (which app and function a run names) and by our client
(whose schema tells which inputs are files); this module imports nothing else of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Ref:
    name: str
    version: Optional[str]
    function: Optional[str]


def parse_ref(ref: str) -> Ref:
    """`[namespace/]name[@version][:function]`; `@latest` means unversioned."""
    rest, _, function = ref.partition(":")
    rest, _, version = rest.partition("@")
    name = rest.rsplit("/", 1)[-1].strip()
    return Ref(name=name, version=version.strip() or None, function=function.strip() or None)
