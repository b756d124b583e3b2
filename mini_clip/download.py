"""The command line of pretrained.py: fetch a named checkpoint ahead of time, print its converted file's path.

    python -m mini_clip.download ViT-B/32          # prints the path of ViT-B-32.safetensors in the cache
    python -m mini_clip.download ViT-H-14/laion2b_s32b_b79k

A module of its own, which `import mini_clip` does not import, so that `python -m` runs it once.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .pretrained import BASE_URL, HF_URL, check_name, fetch, names
from .weights import WeightsError

DESCRIPTION = ("Public CLIP checkpoints by name (OpenAI's, and OpenCLIP's most used): download, verify, "
               "resume, and convert once to mini_clip's format.")


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m mini_clip.download NAME [--cache DIR] [--base-url URL]`: fetch, print the path.

    Returns:
        the exit status: 0 done, 1 a download or conversion failed, 2 an unknown name (a usage error).
    """
    parser = argparse.ArgumentParser(prog="python -m mini_clip.download", description=DESCRIPTION)
    parser.add_argument("name", help=f"one of {', '.join(names())}")
    parser.add_argument("--cache", help="cache directory (default: $MINI_CLIP_CACHE or ~/.cache/mini_clip)")
    parser.add_argument("--base-url", help=f"where the files are (default: {BASE_URL} for OpenAI's, {HF_URL} "
                                           "for OpenCLIP's)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        check_name(args.name)
    except WeightsError as e:  # a wrong name is a usage error
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        print(fetch(args.name, args.cache, args.base_url))
    except (WeightsError, OSError) as e:  # OSError: an unwritable cache directory, a full disk
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
