"""Deterministic synthetic utterances for the tiny IndexTTS-2 GPT, and their sentencepiece tokenizer (ours).

    python make_data.py --out data --tokenizer checkpoints/bpe.model

Writes data/{train,val}.jsonl in the real trainer's paired manifest format (prompt/target records pointing at
.npy files: target text ids, target semantic codes, the prompt's conditioning latent, an emotion vector) and a
sentencepiece model trained on the texts.  Texts are made of invented words; a word tends to be followed by a
fixed other word, so text is partly predictable.  A speaker's conditioning latent shifts its codes, and each text
token maps to a short code pattern: the mel codes are learnable from the text and the conditioning.
Everything comes from fixed seeds: the same files on every build.
"""
from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np

SYLLABLES = ["ka", "ri", "to", "mu", "se", "na", "po", "li", "ve", "do", "gu", "zi", "ha", "ne", "yo", "ba"]
SPEAKERS, LATENTS, DIM, CODES = 4, 4, 64, 128


def sentences(n: int, rng: random.Random, words: list[str]) -> list[str]:
    out = []
    for _ in range(n):
        w = rng.randrange(len(words))
        text = [words[w]]
        for _ in range(rng.randint(1, 4)):
            w = (w * 7 + 3) % len(words) if rng.random() < 0.9 else rng.randrange(len(words))
            text.append(words[w])
        out.append(" ".join(text))
    return out


def codes_for(ids: list[int], speaker: int) -> np.ndarray:
    seq = []
    for t in ids:
        for k in range(2 + t % 3):
            seq.append((t * 11 + k * 7 + speaker * 3) % CODES)
    return np.array(seq, dtype=np.int32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data")
    p.add_argument("--tokenizer", default="checkpoints/bpe.model")
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--val", type=int, default=64)
    args = p.parse_args()
    import sentencepiece as spm

    rng = random.Random(0)
    words = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(40)})[:24]
    texts = sentences(args.train + args.val, rng, words)
    os.makedirs(args.out, exist_ok=True)
    corpus = os.path.join(args.out, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(texts) + "\n")
    prefix = os.path.splitext(args.tokenizer)[0]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=64, model_type="bpe",
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=-1, pad_id=-1,
                                   num_threads=1, seed_sentencepiece_size=1000, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    nrng = np.random.default_rng(0)
    latents = nrng.normal(0, 0.5, (SPEAKERS, LATENTS, DIM)).astype(np.float32)
    feats = os.path.join(args.out, "features")
    os.makedirs(feats, exist_ok=True)
    for split, lo, hi in (("train", 0, args.train), ("val", args.train, args.train + args.val)):
        with open(os.path.join(args.out, f"{split}.jsonl"), "w") as man:
            for i in range(lo, hi):
                spk = i % SPEAKERS
                ids = np.array(sp.encode(texts[i]), dtype=np.int32)
                codes = codes_for(ids.tolist(), spk)
                uid = f"{split}{i:05d}"
                paths = {}
                for key, arr in (("text", ids), ("codes", codes), ("cond", latents[spk]),
                                 ("emo", nrng.normal(0, 0.01, DIM).astype(np.float32))):
                    paths[key] = f"features/{uid}_{key}.npy"
                    np.save(os.path.join(args.out, paths[key]), arr)
                man.write(json.dumps({
                    "id": uid, "prompt_id": f"spk{spk}", "target_id": uid, "text": texts[i],
                    "target_text_ids_path": paths["text"], "target_codes_path": paths["codes"],
                    "prompt_condition_path": paths["cond"], "prompt_emo_vec_path": paths["emo"],
                    "target_text_len": int(len(ids)), "target_code_len": int(len(codes)),
                    "prompt_condition_len": LATENTS}) + "\n")
    print(f"wrote {args.train} train / {args.val} val utterances to {args.out}; tokenizer {prefix}.model "
          f"({sp.get_piece_size()} pieces)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
