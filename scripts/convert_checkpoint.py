#!/usr/bin/env python
"""Convert a checkpoint into a file that loads safely: safetensors, or a `weights_only=True`-readable .ckpt / .pt.

    python scripts/convert_checkpoint.py IN OUT.safetensors [--trust-this-file]
    python scripts/convert_checkpoint.py IN OUT.ckpt [--trust-this-file] [--state-dict-only]

OUT.safetensors holds the model state_dict (tensors only). OUT.ckpt / .pt / .pth holds {"state_dict": ...} plus
the top-level fields of plain types (global_step, epoch, optimizer states, ...) unless --state-dict-only; whatever
`weights_only=True` could not read is dropped and listed.

IN is read with `weights_only=True` first. A file that pickles other objects is only unpickled with
--trust-this-file: pass it only if you trust where the file came from, since unpickling can run any code.
Exit status: 0 done, 2 bad arguments or an untrusted pickle, 1 an unreadable input or a failed write.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.errors import UsageError  # noqa: E402  (light imports only: --help answers before torch loads)

# Output suffixes for a weights_only-readable pickle (anything else must be .safetensors).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")

def main(argv: Sequence[str] | None = None) -> str:
    """Convert; returns the path written."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="checkpoint to convert (.ckpt, .pt, .pth, .bin, .safetensors)")
    parser.add_argument("output", metavar="OUT", help="file to write: .safetensors, or .ckpt / .pt / .pth")
    parser.add_argument("--trust-this-file", action="store_true", help="unpickle IN with weights_only=False if "
                        "needed: only for a file you trust, since unpickling can run code")
    parser.add_argument("--state-dict-only", action="store_true", help=".ckpt/.pt output: only the state_dict, "
                        "no global_step, optimizer states, ...")
    args = parser.parse_args(argv)
    from ldm.checkpoint import extract_state_dict
    from ldm.files import human_size
    from ldm.interop.safe_checkpoint import read_checkpoint, split_tensors, write_pickle, write_safetensors

    if not args.output.endswith((".safetensors",) + PICKLE_SUFFIXES):
        raise UsageError(f"OUT must end with .safetensors, {', '.join(PICKLE_SUFFIXES)}: {args.output}")
    same = os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.output, args.input)
    if same or os.path.realpath(args.output) == os.path.realpath(args.input):
        raise UsageError(f"OUT is IN ({args.input}); write the converted file elsewhere")
    checkpoint = read_checkpoint(args.input, args.trust_this_file)
    tensors, dropped = split_tensors(extract_state_dict(checkpoint))
    notes = [f"dropped {len(dropped)} non-tensor state_dict entries: {', '.join(dropped[:10])}"] if dropped else []
    if args.output.endswith(".safetensors"):
        notes += write_safetensors(tensors, args.output, args.input)
    else:
        notes += write_pickle(checkpoint, tensors, args.output, args.state_dict_only)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.output}: {len(tensors)} tensors, {human_size(os.path.getsize(args.output))}")
    return args.output


def run(argv: Sequence[str] | None = None) -> int:
    """`main` with the exit status: 2 for bad arguments or an untrusted pickle, 1 for unreadable input / failed
    write."""
    try:
        main(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from ldm.checkpoint import CheckpointError  # imports torch: only once something went wrong
        from ldm.files import SaveError

        if not isinstance(err, (CheckpointError, SaveError)):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
