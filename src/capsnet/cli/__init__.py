"""The ``capsnet`` command line: the only package that parses arguments. Its parsers are
in :mod:`capsnet.cli.options`, what each command does in :mod:`capsnet.cli.commands`, its
progress display in :mod:`capsnet.cli.progress`. ``main`` is the ``capsnet`` program
(pyproject's entry point): a one-line error and exit code 2 for bad input."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence

from capsnet.allocator import keep_freed_memory
from capsnet.cli import commands
from capsnet.cli.options import build_parser
from capsnet.errors import CapsNetError

log = logging.getLogger("capsnet")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if callable(reconfigure := getattr(sys.stdout, "reconfigure", None)):
        reconfigure(errors="surrogateescape")  # file names that are not UTF-8 print as given
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.runtime import distributed_from_env

    logging.basicConfig(
        level=logging.WARNING if args.quiet or not distributed_from_env().is_main else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    keep_freed_memory()  # large activations otherwise cost page faults every step
    if args.threads is not None:
        # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
        import torch

        torch.set_num_threads(args.threads)
    try:
        status = getattr(commands, f"cmd_{args.command.replace('-', '_')}")(args)
    except CapsNetError as e:
        print(f"capsnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capsnet: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as e:
        if (message := _out_of_memory(e)) is None:
            raise
        print(f"capsnet: error: {message}", file=sys.stderr)
        return 2
    return status or 0


def _out_of_memory(e: BaseException) -> str | None:
    """A one-line message if ``e`` is an allocation failure (CPU, CUDA or Python), else None."""
    text = str(e)
    cpu = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if cpu:
        size = f"{int(cpu.group(1)) / 2**30:.1f} GiB"
    elif type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
        size = text.splitlines()[0] if text else "an allocation failed"
    else:
        return None
    return f"out of memory ({size}); a smaller --batch-size or model, or fewer images, may fit"


__all__ = ["main"]
