"""Validation for the simulated IndexTTS-2 GPT trainer (a test double): the loss of a checkpoint.

    python validate.py --checkpoint PATH [--val-manifest M --tokenizer T --config C --batch-size N]

The same command line as the validation script for the real model (images/indextts-tiny/validate.py);
the simulator needs only the checkpoint and ignores the rest.

Prints one JSON line, e.g. {"step": 351000, "val_text_loss": 2.147, "val_mel_loss": 0.644}: runner
reads the last JSON object a validation prints.  No noise: the same checkpoint always gives the same
numbers (1.04 x the checkpoint's smoothed train loss; NaN, written as JSON NaN, for a NaN state).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# sim.py lies beside this file, or (the script mounted elsewhere) in the image's working directory.
sys.path[:0] = [os.path.dirname(os.path.realpath(__file__)), os.getcwd(), "/workspace/index-tts"]
import sim  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="validate.py", description="Validation loss of a simulated IndexTTS-2 GPT checkpoint.")
    p.add_argument("--checkpoint", required=True)
    for flag in ("--val-manifest", "--tokenizer", "--config"):
        p.add_argument(flag, default=None, help="accepted for the real model's validate.py command line; unused")
    p.add_argument("--batch-size", type=int, default=4, help="unused")
    args = p.parse_args(argv)
    light = sim.load_light(args.checkpoint)  # without importing torch, when it can (a simulator checkpoint)
    st, _ = sim.from_checkpoint(light) if light is not None else sim.load(args.checkpoint)[:2]
    text, mel = sim.validation(st)
    print(json.dumps({"step": st.step, "val_text_loss": text, "val_mel_loss": mel}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
