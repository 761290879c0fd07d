"""Start `sglang-router` with its API key read from a file, not from the command line (where every
local user sees it in `ps`): `sglang_router.launch_router` takes the key as `--api-key` only, so
this reads the file and hands the key over in its own memory.

    python -m megatron_s2l.rollout.router_launch --api-key-file KEY.yaml ROUTER_FLAGS...

The key file is YAML `api-key: ...` (as `RouterServer` writes it, 0600). Every other flag goes to
`sglang_router.launch_router` unchanged.
"""

from __future__ import annotations

import sys

import yaml


def split_key_file(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the key file, the router's own flags)."""
    if "--api-key-file" not in argv:
        return None, argv
    at = argv.index("--api-key-file")
    return argv[at + 1], argv[:at] + argv[at + 2 :]


def main(argv: list[str]) -> None:
    from sglang_router.launch_router import launch_router, parse_router_args

    key_file, router_argv = split_key_file(argv)
    if key_file is not None:
        with open(key_file) as file:
            router_argv += ["--api-key", str(yaml.safe_load(file)["api-key"])]
    launch_router(parse_router_args(router_argv))


if __name__ == "__main__":
    main(sys.argv[1:])
