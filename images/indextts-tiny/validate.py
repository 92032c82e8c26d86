"""Validation loss of an IndexTTS-2 GPT checkpoint, computed with the real model class (ours).

    python validate.py --checkpoint CKPT --val-manifest val.jsonl --tokenizer bpe.model --config config.yaml

Prints one JSON line, `{"step": N, "val_text_loss": x, "val_mel_loss": y, "val_mel_top1": z}` (runner's
checkpoints.validate reads the last JSON object a validation prints; NaN is written as NaN).  The real trainer
ships no validation script; this one is self-contained so that it can be mounted alone into an image holding
the index-tts code (the specs mount it at /opt/runner/validate.py).  The tiny image's trainer imports its model,
data and loss code from here, so validation and training compute the same loss.

What is in it:

* `unified_voice()`: the class `UnifiedVoice` from `indextts.gpt.model_v2`, as installed in the image from the
  PyPI package indextts2-inference (or as found in an index-tts checkout).  The package's `indextts/__init__.py`
  imports the inference stack (audio, text front end, ...); training needs none of it, so the package is entered
  through a bare module object that only knows where its files are.
* `build_model(config, vocab)`: the model from the `gpt:` section of a config YAML, the text vocabulary sized
  to the tokenizer, and the modules training never uses removed (the emotion encoders and the conditioning
  encoders: the manifests carry precomputed conditioning latents, as the real trainer's do).
* the paired manifest format of the real trainer (prompt/target records, .npy features), a batch collator,
  and `losses()`: masked cross-entropy on the text and mel logits, as the real trainer computes them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

UNUSED_IN_TRAINING = ("emo_conditioning_encoder", "emo_perceiver_encoder", "emo_layer", "emovec_layer",
                      "conditioning_encoder", "perceiver_encoder")


def unified_voice():
    """IndexTTS-2's GPT class, without running indextts/__init__.py."""
    if "indextts" not in sys.modules:
        spec = importlib.util.find_spec("indextts")
        if spec is None:
            raise ImportError("the indextts package is not installed (pip install --no-deps indextts2-inference==2.1.1)")
        pkg = types.ModuleType("indextts")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["indextts"] = pkg
    from indextts.gpt.model_v2 import UnifiedVoice

    return UnifiedVoice


def read_config(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def vocab_size(tokenizer_path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tokenizer_path)).get_piece_size()


def build_model(config_path, vocab: int) -> torch.nn.Module:
    cfg = dict(read_config(config_path)["gpt"])
    cfg["number_text_tokens"] = vocab
    model = unified_voice()(**cfg)
    for name in UNUSED_IN_TRAINING:
        if hasattr(model, name):
            delattr(model, name)
    return model


def load_weights(model: torch.nn.Module, path) -> tuple[list, list]:
    """Weights from a base checkpoint ({"model": state} or a bare state dict), leniently as the real trainer does."""
    raw = torch.load(path, map_location="cpu")
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    state = {k: v for k, v in state.items() if not k.startswith("inference_model.") and k != "gpt.wte.weight"}
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


# ---- data ---------------------------------------------------------------------------------------------
FIELDS = ("target_text_ids_path", "target_codes_path", "prompt_condition_path", "prompt_emo_vec_path")


def read_manifest(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Manifest not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            for key in FIELDS:
                p = Path(rec[key])
                rec[key] = str(p if p.is_absolute() else path.parent / p)
            records.append(rec)
    if not records:
        raise RuntimeError(f"No entries in {path}")
    return records


class Manifest(torch.utils.data.Dataset):
    def __init__(self, path):
        self.records = read_manifest(path)
        self.cache: dict[int, dict] = {}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if i not in self.cache:
            r = self.records[i]
            self.cache[i] = {
                "text_ids": torch.from_numpy(np.load(r["target_text_ids_path"]).astype(np.int64)),
                "codes": torch.from_numpy(np.load(r["target_codes_path"]).astype(np.int64)),
                "condition": torch.from_numpy(np.load(r["prompt_condition_path"]).astype(np.float32)),
                "emo_vec": torch.from_numpy(np.load(r["prompt_emo_vec_path"]).astype(np.float32)),
                "text_len": int(r["target_text_len"]),
                "code_len": int(r["target_code_len"]),
            }
        return self.cache[i]


def collate(items: list[dict]) -> dict:
    pad = torch.nn.utils.rnn.pad_sequence
    return {
        "text_ids": pad([x["text_ids"] for x in items], batch_first=True),
        "codes": pad([x["codes"] for x in items], batch_first=True),
        "condition": torch.stack([x["condition"] for x in items]),
        "emo_vec": torch.stack([x["emo_vec"] for x in items]),
        "text_lengths": torch.tensor([x["text_len"] for x in items]),
        "code_lengths": torch.tensor([x["code_len"] for x in items]),
    }


# ---- the loss -----------------------------------------------------------------------------------------
def _aligned(model, ids, lengths, start, stop, pad_fn):
    x = pad_fn(ids.clone(), lengths)
    x = F.pad(x, (0, 1), value=stop)
    return model.build_aligned_inputs_and_targets(x, start, stop)


def _masked_ce(logits, targets, lengths):
    # Positions up to and including the stop token count; padding after it does not.
    keep = torch.arange(targets.size(1)).unsqueeze(0) < (lengths + 1).unsqueeze(1)
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (ce * keep).sum() / keep.sum().clamp_min(1), keep


def losses(model, batch) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(text_loss, mel_loss, mel_top1) of a batch."""
    text_in, text_tgt = _aligned(model, batch["text_ids"], batch["text_lengths"], model.start_text_token,
                                 model.stop_text_token, model.set_text_padding)
    mel_in, mel_tgt = _aligned(model, batch["codes"], batch["code_lengths"], model.start_mel_token,
                               model.stop_mel_token, model.set_mel_padding)
    n = batch["text_ids"].size(0)
    speed_on = model.speed_emb(torch.ones(n, dtype=torch.long))
    speed_off = model.speed_emb(torch.zeros(n, dtype=torch.long))
    conds = torch.cat([batch["condition"] + batch["emo_vec"].unsqueeze(1), speed_on.unsqueeze(1), speed_off.unsqueeze(1)], 1)
    text_emb = model.text_embedding(text_in) + model.text_pos_embedding(text_in)
    mel_emb = model.mel_embedding(mel_in) + model.mel_pos_embedding(mel_in)
    text_logits, mel_logits = model.get_logits(conds, text_emb, model.text_head, mel_emb, model.mel_head)
    text_loss, _ = _masked_ce(text_logits, text_tgt, batch["text_lengths"])
    mel_loss, keep = _masked_ce(mel_logits, mel_tgt, batch["code_lengths"])
    with torch.no_grad():
        hit = (mel_logits.argmax(dim=1) == mel_tgt) & keep
        top1 = float(hit.sum()) / max(1, int(keep.sum()))
    return text_loss, mel_loss, top1


def evaluate(model, loader) -> dict:
    model.eval()
    sums = {"text_loss": 0.0, "mel_loss": 0.0, "mel_top1": 0.0}
    count = 0
    with torch.no_grad():
        for batch in loader:
            t, m, top1 = losses(model, batch)
            n = batch["text_ids"].size(0)
            sums["text_loss"] += float(t) * n
            sums["mel_loss"] += float(m) * n
            sums["mel_top1"] += top1 * n
            count += n
    model.train()
    return {k: v / max(1, count) for k, v in sums.items()}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="validate.py", description="Validation loss of an IndexTTS-2 GPT checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--val-manifest", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--config", default="checkpoints/config.yaml")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    threads()
    torch.manual_seed(0)
    model = build_model(args.config, vocab_size(args.tokenizer))
    raw = torch.load(args.checkpoint, map_location="cpu")
    load_weights(model, args.checkpoint)
    loader = torch.utils.data.DataLoader(Manifest(args.val_manifest), batch_size=args.batch_size, shuffle=False,
                                         collate_fn=collate)
    v = evaluate(model, loader)
    step = int(raw.get("step", 0)) if isinstance(raw, dict) else 0
    print(json.dumps({"step": step, "val_text_loss": v["text_loss"], "val_mel_loss": v["mel_loss"],
                      "val_mel_top1": v["mel_top1"]}), flush=True)
    return 0


def threads() -> None:
    """One thread unless INDEXTTS_TINY_THREADS says otherwise: a model this small runs 2-5x faster on one core
    than on two that something else also uses (measured on a 2-core machine)."""
    torch.set_num_threads(max(1, int(os.environ.get("INDEXTTS_TINY_THREADS") or 1)))


if __name__ == "__main__":
    sys.exit(main())
