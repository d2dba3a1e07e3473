"""CLIP's real BPE tokenizer, built offline from the merge list shipped with the package.

Stable Diffusion 1.x tokenizes with openai/clip-vit-large-patch14's byte-pair vocabulary. No model hub is needed to
reproduce it: the vocabulary is derived from the merge list (see ``data/clip_bpe/README.md``), so tiny test pipelines
and the benchmark world split words into exactly the tokens SD1.x would.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer, T5TokenizerFast

N_MERGES = 49152 - 256 - 2  # CLIP keeps 48894 merges: 49408 ids = 2 * 256 bytes + merges + 2 specials
MODEL_MAX_LENGTH = 77


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable unicode table, in byte order of the vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes, extra = list(printable), 0
    order = list(printable)
    for b in range(256):
        if b not in printable:
            order.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@cache
def _vocab_files() -> tuple[str, str]:
    """Write ``vocab.json`` and ``merges.txt`` once per process into a temp dir and return their paths."""
    bpe = resources.files("erasekit") / "data" / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + N_MERGES]
    symbols = _bytes_to_unicode()
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="erasekit-clip-bpe-"))
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The SD1.x tokenizer (pads with EOS, id 49407, to 77 positions), built without any download.

    ``pad_token="!"`` gives OpenCLIP's padding (id 0), as SD2.x's tokenizer and SDXL's second tokenizer pad.
    """
    vocab, merges = _vocab_files()
    return CLIPTokenizer(vocab, merges, model_max_length=MODEL_MAX_LENGTH, pad_token=pad_token)


T5_MAX_LENGTH = 512


def t5_tokenizer(model_max_length: int = T5_MAX_LENGTH) -> T5TokenizerFast:
    """A T5-style tokenizer for tiny FLUX pipelines, built in memory: a unigram model over CLIP's word pieces (a word's
    last piece becomes "▁word", as SentencePiece marks word starts; every piece costs the same, so the fewest pieces
    win), ``<pad>`` 0, ``</s>`` 1 appended to every text, ``<unk>`` 2, no start token. Real FLUX models bring their own
    T5 tokenizer (``tokenizer_2``); this one only needs to split words into few pieces offline."""
    vocab = json.loads(Path(_vocab_files()[0]).read_text(encoding="utf-8"))
    pieces = {("\u2581" + tok[:-4] if tok.endswith("</w>") else tok): -1.0 for tok in vocab if not tok.startswith("<|")}
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    return T5TokenizerFast(vocab=[*specials, *pieces.items()], extra_ids=0, model_max_length=model_max_length)
