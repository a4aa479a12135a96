"""Remove one demo tenant's account, users and assets: a cleanup script on ``Cleanup``.

    python cleanup_demo_tenant.py URL TENANT                           # dry run: counts
    python cleanup_demo_tenant.py URL TENANT --apply --confirm DBNAME  # delete

The guard, the database name, the backup, the counts and the audit log are the
plugin's own; ``safe-cleanup restore`` puts the rows back.
"""

from __future__ import annotations

import argparse
import sys

from pytest_safe_cleanup import Cleanup, CleanupRefused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("tenant", help="the client account's name, e.g. demo-acme")
    parser.add_argument("--apply", action="store_true")
    parser.add_argument("--confirm", help="the database name, when no terminal is attached")
    args = parser.parse_args(argv)
    try:
        with Cleanup(args.url, mode="apply" if args.apply else "dry", confirm=args.confirm) as c:
            c.delete("client_accounts", name=args.tenant, cascade=True)
    except CleanupRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return exc.exit_code
    for o in c.outcomes:
        print(f"{o.table}: counted {o.counted}, deleted {o.deleted} ({o.status})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
