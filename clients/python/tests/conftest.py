import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


def router_binary() -> pathlib.Path:
    """YELLOWSTONE_ROUTER_BIN (the binary's path; YELLOWSTONE_ROUTER is yellowstone-ctl's
    address of a running router), else target/debug or target/release of the repository
    (build it first: cargo build -p yellowstone-gateway --bin yellowstone-router)."""
    explicit = os.environ.get("YELLOWSTONE_ROUTER_BIN")
    if explicit:
        path = pathlib.Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"YELLOWSTONE_ROUTER_BIN={explicit} is not a file")
        return path
    candidates = [REPO / "target" / profile / "yellowstone-router" for profile in ("debug", "release")]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise FileNotFoundError(
            "yellowstone-router not built: run `cargo build -p yellowstone-gateway "
            "--bin yellowstone-router` or set YELLOWSTONE_ROUTER_BIN")
    return max(found, key=lambda c: c.stat().st_mtime)
