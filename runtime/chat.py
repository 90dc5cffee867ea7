"""ChatML prompts to token ids, and generated ids back to text as they stream out.

Inputs: the engine folder's tokenizer.json (Hugging Face `tokenizers`) and the
manifest's `TokenSpec` and `ChatSpec`.  Outputs: `encode_prompt` gives the decoder's
prompt ids, int64 [seq]; `StreamDecoder.push` gives the text each new id makes final.

The prompt, for image_tokens = N > 0 and a non-empty system text:

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|><|image_pad|> x N<|vision_end|>\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n

Control tokens go in as ids.  The text between them is encoded by a private copy of the
tokenizer that does not match special tokens, so a user who types "<|im_end|>" gets
the characters, not the token.  `tokenizers` encodes a whole string by cutting it at
special tokens and encoding the pieces apart, so encoding the same pieces here gives
the ids the model was trained on; `load` checks that on a probe prompt.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.errors import EngineError, PromptError
from runtime.manifest import ChatSpec, TokenSpec

REPLACEMENT = "\ufffd"  # what decoding gives for the bytes of an unfinished UTF-8 character

_PROBE = ("You are a probe.", 2, "Describe the image, please.")  # system, image_tokens, prompt


class ChatTokenizer:
    """tokenizer.json plus the manifest's tokens: prompts in, text out."""

    def __init__(self, tok: Tokenizer, tokens: TokenSpec, chat: ChatSpec, where: str):
        self.tokens = tokens
        self.chat = chat
        self._where = where
        self._tok = tok  # matches special tokens: decoding, and the layout reference
        self._text = Tokenizer.from_str(tok.to_str())  # text between control tokens
        self._text.encode_special_tokens = True  # a runtime setting, not saved by to_str
        self._n_vocab = tok.get_vocab_size(with_added_tokens=True)
        self._special_ids = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)

    @classmethod
    def load(cls, path: Path, tokens: TokenSpec, chat: ChatSpec, vocab_size: int | None = None) -> ChatTokenizer:
        """Read tokenizer.json at `path` and check it against the manifest's token ids (and, given the
        decoder's vocab_size, that the tokenizer fits in it)."""
        path = Path(path)
        if not path.is_file():
            got = "a folder" if path.is_dir() else "nothing"
            raise EngineError(
                f"{path}: expected the tokenizer.json written by `python -m export`, found {got}; "
                f"re-export the engine folder")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON or schema
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise EngineError(
                f"{path}: not a readable Hugging Face tokenizer.json ({reason}); re-export the engine folder"
            ) from None
        _check_tokens(tok, tokens, vocab_size, path)
        self = cls(tok, tokens, chat, str(path))
        self._check_layout()
        return self

    @property
    def n_vocab(self) -> int:
        """Tokens the tokenizer knows; a model's vocab can be larger (padded rows)."""
        return self._n_vocab

    def token_id(self, text: str) -> int:
        i = self._tok.token_to_id(text)
        if i is None:
            raise EngineError(f"{self._where}: no token {text!r} in the tokenizer's {self._n_vocab} tokens")
        return i

    # ------------------------------------------------------------------------- prompts

    def encode_prompt(self, prompt: str, image_tokens: int, system: str | None = None) -> np.ndarray:
        """The ChatML ids [seq] for one user turn; system None means the manifest's default."""
        ids: list[int] = []
        for is_text, run in itertools.groupby(self._template(prompt, image_tokens, system),
                                              key=lambda p: isinstance(p, str)):
            ids += self._encode_text("".join(run)) if is_text else list(run)
        return np.asarray(ids, dtype=np.int64)  # [seq]

    def _template(self, prompt: str, image_tokens: int, system: str | None) -> list[str | int]:
        """The prompt as text pieces and control-token ids, in order."""
        if image_tokens < 0:
            raise PromptError(f"image_tokens must be >= 0, got {image_tokens}")
        t = self.tokens
        system = self.chat.default_system if system is None else system
        parts: list[str | int] = []
        if system:
            parts += [t.im_start_id, "system\n", system, t.im_end_id, "\n"]
        parts += [t.im_start_id, "user\n"]
        if image_tokens > 0:  # image_placement "before_text"
            parts += [t.image_start_id, *[t.image_pad_id] * image_tokens, t.image_end_id, "\n"]
        parts += [prompt, t.im_end_id, "\n", t.im_start_id, "assistant\n"]
        return parts

    def _encode_text(self, text: str) -> list[int]:
        ids = self._text.encode(text, add_special_tokens=False).ids
        # BPE could still merge into a special token if tokenizer.json's merges allow it.
        if not self._special_ids.isdisjoint(ids):
            bad = sorted(self._special_ids.intersection(ids))
            raise EngineError(
                f"{self._where}: plain text {text[:40]!r} encodes to special token ids {bad}; "
                f"the BPE merges can build special tokens, re-export tokenizer.json")
        return ids

    def _check_layout(self):
        """Piece-by-piece ids must equal the whole template string's, as the model saw in training."""
        system, image_tokens, prompt = _PROBE
        whole = "".join(p if isinstance(p, str) else self._tok.id_to_token(p)
                        for p in self._template(prompt, image_tokens, system))
        expected = self._tok.encode(whole, add_special_tokens=False).ids
        got = self.encode_prompt(prompt, image_tokens, system).tolist()
        if got != expected:
            raise EngineError(
                f"{self._where}: the ChatML prompt encodes to {len(got)} ids piece by piece but "
                f"{len(expected)} as one string (special tokens with lstrip/rstrip or normalized=true?); "
                f"re-export tokenizer.json with plain special tokens")

    # ------------------------------------------------------------------------- text

    def is_text_id(self, token_id: int) -> bool:
        """Whether decoding `token_id` can give text (not a special token, not past the tokenizer)."""
        return 0 <= token_id < self._n_vocab and token_id not in self._special_ids

    def decode(self, ids) -> str:
        """Text of `ids`, skipping special tokens and ids past the tokenizer's end."""
        return self._tok.decode([int(i) for i in ids if 0 <= i < self._n_vocab], skip_special_tokens=True)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Text from ids one at a time; all pieces joined equal `decode(all ids)`.

    Keeps a window of ids from `prefix` on: ids[prefix:read] were emitted last time and
    give the context for decoding, ids[read:] are not emitted yet.  A new id releases
    text once the window decodes longer than its prefix and does not end in U+FFFD
    (the bytes of a character still arriving).  Released text ends on a whole
    character, so the window restarts there and each push decodes a few ids only.
    """

    def __init__(self, chat_tokenizer: ChatTokenizer):
        self._ct = chat_tokenizer
        self._ids: list[int] = []  # the window; older ids are dropped
        self._read = 0  # ids[:read] are emitted
        self._prefix_text = ""  # decode(ids[:read])

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        if not self._ct.is_text_id(token_id):
            return ""  # decode() skips them too, so the joined text is unchanged
        self._ids.append(token_id)
        text = self._ct.decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT):
            return ""
        return self._release(text)

    def flush(self) -> str:
        """What is left (an unfinished character comes out as U+FFFD, as in decode)."""
        if len(self._ids) == self._read:
            return ""
        return self._release(self._ct.decode(self._ids))

    def _release(self, text: str) -> str:
        piece = text[len(self._prefix_text):]
        self._ids = self._ids[self._read:]  # the ids just emitted become the next prefix
        self._read = len(self._ids)
        self._prefix_text = self._ct.decode(self._ids)
        return piece


def _check_tokens(tok: Tokenizer, tokens: TokenSpec, vocab_size: int | None, path: Path):
    """Every id of the manifest's TokenSpec must be the tokenizer's id for that token."""
    names = ("im_start", "im_end", "image_start", "image_pad", "image_end", "eos")
    special_ids = {i: t.content for i, t in tok.get_added_tokens_decoder().items() if t.special}
    special = set(special_ids.values())
    for name in names:
        text, want = getattr(tokens, name), getattr(tokens, f"{name}_id")
        got = tok.token_to_id(text)
        if got is None:
            raise EngineError(
                f"{path}: has no token {text!r}, manifest.json says it is id {want}; "
                f"the folder mixes files from two exports, re-export it")
        if got != want:
            raise EngineError(
                f"{path} says {text!r} is id {got}, manifest.json says {want}; "
                f"the folder mixes files from two exports, re-export it")
        if text not in special:
            raise EngineError(
                f"{path}: {text!r} (id {got}) is not a special token, so prompt text could produce it; "
                f"mark it \"special\": true in tokenizer.json's added_tokens, or re-export")
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and n_vocab > vocab_size:
        raise EngineError(
            f"{path}: {n_vocab} tokens, more than the decoder's vocab_size {vocab_size} in manifest.json; "
            f"the folder mixes files from two exports, re-export it")
    outside = [i for i in tokens.stop_ids if i not in special_ids]
    if outside or not tokens.stop_ids:
        raise EngineError(
            f"{path}: manifest.json's stop_ids {list(tokens.stop_ids)} must be special tokens of this "
            f"tokenizer (not {outside}: text could never end there, or end mid-sentence); restore manifest.json "
            f"or re-export the engine folder")
