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


def router_arguments(argv: list[str]) -> list[str]:
    """The router's own flags, with `--api-key-file FILE` replaced by the key it holds."""
    if "--api-key-file" not in argv:
        return argv
    at = argv.index("--api-key-file")
    with open(argv[at + 1]) as file:
        key = yaml.safe_load(file)["api-key"]
    # One argument, `--api-key=KEY`: a separate value starting with '-' would read as a flag.
    return argv[:at] + argv[at + 2 :] + [f"--api-key={key}"]


def main(argv: list[str]) -> None:
    from sglang_router.launch_router import launch_router, parse_router_args

    launch_router(parse_router_args(router_arguments(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
