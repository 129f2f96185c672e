"""The first process of a kernel sandbox, outside it: put limits on itself, then become bubblewrap.

    python -I -S launcher.py [--cgroup PROCS_FILE]... [--rlimit NAME=VALUE]... -- bwrap …

- `--cgroup`: joins each control group by writing its own pid into that
  group's `cgroup.procs`, so bubblewrap and everything the sandbox starts are
  counted and limited there (memory, CPU, processes) and can be frozen.
- `--rlimit data=BYTES`, `nproc=N`: hard and soft resource limits, inherited
  by the whole sandbox (the fallback where no control group can be made).
- SIGINT is ignored from here on: jupyter_client signals the kernel's process
  group, and bubblewrap would die of it (taking the sandbox along); kernels are
  interrupted with a message on their control channel instead.

Run by the server's own Python with `-I -S`: the standard library only, and
nothing from this package. It fails (exit 126, reason on stderr) rather than
start a sandbox without a limit it was asked for.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

RLIMITS = {"data": resource.RLIMIT_DATA, "nproc": resource.RLIMIT_NPROC}


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: launcher.py [--cgroup PROCS_FILE]... [--rlimit NAME=VALUE]... -- COMMAND [ARG...]")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    if len(options) % 2 or not command:
        sys.exit("launcher.py: options come in pairs, and a command must follow --")
    try:
        for flag, value in zip(options[::2], options[1::2]):
            if flag == "--cgroup":
                with open(value, "w") as procs:
                    procs.write(str(os.getpid()))
            elif flag == "--rlimit":
                name, _, number = value.partition("=")
                resource.setrlimit(RLIMITS[name], (int(number), int(number)))
            else:
                raise ValueError(f"unknown option {flag}")
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"launcher.py: could not put the sandbox's limits in place: {exc!r}\n")
        sys.exit(126)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored signal stays ignored across exec
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
