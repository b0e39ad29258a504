"""Installs the Node packages of tests/polyglot (`npm ci` into tests/polyglot/node_modules)
when package-lock.json changed since the last install, and only then.

The stamp `node_modules/.package-lock.sha256` holds the SHA-256 of the package-lock.json
that was installed; when it matches, nothing runs (a second `make test` costs nothing). The
stamp lives inside node_modules, so deleting node_modules also forgets it. An exclusive
lock (flock on package-lock.json) keeps two test runs in one working tree from running
`npm ci` at once.

`make test` runs this file (it says so and does nothing where npm is absent);
tests/polyglot/test_node_client.py calls `ensure()` itself, so `pytest` alone works too.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCKFILE = HERE / "package-lock.json"
NODE_MODULES = HERE / "node_modules"
STAMP = NODE_MODULES / ".package-lock.sha256"
# --ignore-scripts: the packages are plain JavaScript; no install script needs to run.
NPM_CI = ("ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")
NPM_TIMEOUT = 600


class NpmError(RuntimeError):
    """npm is missing or `npm ci` failed; the message says what to do."""


def lock_hash() -> str:
    return hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()


def up_to_date() -> bool:
    """Whether node_modules holds what package-lock.json pins."""
    try:
        return STAMP.read_text().strip() == lock_hash()
    except FileNotFoundError:
        return False


def ensure() -> bool:
    """Runs `npm ci` unless node_modules is up to date; returns whether it ran."""
    if up_to_date():
        return False
    with LOCKFILE.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if up_to_date():  # another run installed it while this one waited
                return False
            npm = shutil.which("npm")
            if npm is None:
                raise NpmError(
                    f"{NODE_MODULES} is missing or older than package-lock.json and npm is not"
                    " installed: install npm and run `make test` (or `npm ci` in tests/polyglot)"
                )
            try:
                done = subprocess.run(
                    [npm, *NPM_CI],
                    cwd=HERE,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise NpmError(f"npm ci in {HERE} took more than {NPM_TIMEOUT} s") from exc
            if done.returncode != 0:
                raise NpmError(
                    f"npm ci in {HERE} failed (exit {done.returncode}); is the npm registry"
                    f" reachable?\n{done.stdout}{done.stderr}"
                )
            STAMP.write_text(lock_hash() + "\n")
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> int:
    if up_to_date():
        return 0
    if shutil.which("npm") is None:
        print(
            "tests/polyglot: npm not found, so the Node packages are not installed"
            " (test_node_client.py skips where node is absent, fails where node is present)"
        )
        return 0
    try:
        ran = ensure()
    except NpmError as exc:
        print(f"tests/polyglot: {exc}", file=sys.stderr)
        return 1
    if ran:
        print("tests/polyglot: installed the Node packages (npm ci)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
