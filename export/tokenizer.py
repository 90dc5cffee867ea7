"""tokenizer.json for an engine folder, and the TokenSpec the manifest records for it.

`build_chatml_tokenizer(vocab_size, corpus=None)` makes a Qwen2-like byte-level BPE tokenizer in code:
the Qwen2 split regex, byte-level pre-tokenizer and decoder, no normalizer, BPE merges learnt
from `corpus`, then the ChatML and Qwen2-VL special tokens last (as Qwen2 numbers them).
Without a corpus (engines exported with random weights, the tests' tiny models) the merges come
from a seeded synthetic corpus of scene descriptions: same vocab_size, same bytes.  The demo
model (export.demo) passes its own scene language.

`token_spec_from_tokenizer(tok)` reads the ids of the chat and image tokens out of any
tokenizer (built here or a checkpoint's) into a `runtime.manifest.TokenSpec`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from runtime.errors import EngineError
from runtime.manifest import TokenSpec

# Qwen2's pre-tokenizer split: contractions, letters with one leading non-letter,
# single digits, punctuation runs, newline runs, other whitespace.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


@dataclass(frozen=True)
class ImageTokenStyle:
    """How a model marks an image in the prompt: start, one pad per image token, end."""

    name: str
    start: str
    pad: str
    end: str


# Tried in order; the first whose three tokens all exist in the tokenizer wins.
IMAGE_TOKEN_STYLES = (
    ImageTokenStyle("Qwen2-VL", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
    ImageTokenStyle("InternVL", "<img>", "<IMG_CONTEXT>", "</img>"),
)

SPECIAL_TOKENS = (EOS, IM_START, IM_END, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
N_BYTES = 256  # the byte-level alphabet every merge builds on


# ----------------------------------------------------------------------------- building


def build_chatml_tokenizer(vocab_size: int, corpus: list[str] | None = None) -> Tokenizer:
    """A deterministic Qwen2-like tokenizer with at most `vocab_size` tokens.

    The merges are learnt from `corpus` (default: a seeded synthetic corpus of plain
    English about images).  The size can come out below vocab_size when the corpus runs
    out of merges; a model's embedding rows past the tokenizer are simply never produced by it.
    """
    if vocab_size < N_BYTES + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte-level tokenizer: it needs at least "
            f"{N_BYTES + len(SPECIAL_TOKENS)} ({N_BYTES} bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),  # room for the special tokens added after
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed=0, n_lines=6000) if corpus is None else corpus, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    assert tok.get_vocab_size(with_added_tokens=True) <= vocab_size
    return tok


_COLOURS = ("red green blue yellow orange purple pink brown black white grey gray golden silver "
            "dark light pale bright navy teal beige cream turquoise crimson violet").split()
_SHAPES = ("circle square triangle rectangle star cube sphere cylinder cone ring arrow line "
           "oval hexagon diamond heart cross spiral dot stripe curve block").split()
_THINGS = ("cat dog bird horse cow sheep car bus truck bicycle train plane boat tree house "
           "building bridge road river mountain cup bottle chair table lamp flower book phone "
           "laptop person man woman child ball kite umbrella window door clock sign fence cloud "
           "sky sun moon beach field street kitchen garden bench apple banana pizza cake").split()
_MATERIALS = "wooden metal glass plastic paper stone brick cotton leather rubber".split()
_SIZES = "small large tiny huge tall short long wide narrow round flat shiny striped".split()
_PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the centre",
           "in the middle", "near the edge", "behind the tree", "next to the window",
           "under the table", "in the foreground", "in the background", "above the door",
           "in the top-left corner", "in the bottom-right corner", "between the two cars")
_VERBS = ("sits", "stands", "lies", "hangs", "floats", "rests", "waits", "runs", "flies", "leans")
_COUNTS = "no one two three four five six seven eight nine ten eleven twelve several many a few".split()
_NON_ASCII = ("café", "naïve", "Zürich", "façade", "crème brûlée", "jalapeño", "smørrebrød",
              "東京", "猫", "красный", "привет", "¿qué?", "°C", "€5", "→", "🙂", "🐱")


def _corpus(seed: int, n_lines: int) -> list[str]:
    """Plain English about images: colours, shapes, counts, positions, some digits and punctuation."""
    r = random.Random(seed)
    c = r.choice
    templates = (
        lambda: f"There are {c(_COUNTS)} {c(_COLOURS)} {c(_SHAPES)}s {c(_PLACES)}.",
        lambda: f"A {c(_SIZES)} {c(_COLOURS)} {c(_THINGS)} {c(_VERBS)} {c(_PLACES)}, "
                f"next to {r.randint(0, 999)} {c(_SHAPES)}s!",
        lambda: f"What colour is the {c(_THINGS)}? It's {c(_COLOURS)}; the {c(_SHAPES)} is {c(_COLOURS)}.",
        lambda: f"The image shows a {c(_MATERIALS)} {c(_THINGS)} in {c(_NON_ASCII)} "
                f"({r.randint(1, 12)}:{r.randint(10, 59)}).",
        lambda: f"I can see {r.randint(2, 40)} {c(_THINGS)}s, {c(_COUNTS)} {c(_COLOURS)} "
                f"{c(_SHAPES)}s and a \"{c(_NON_ASCII)}\" sign.\n",
        lambda: f"- {c(_COLOURS).capitalize()} {c(_SHAPES)} {c(_PLACES)}: {r.randint(0, 100)}%\n",
        lambda: f"How many {c(_THINGS)}s are {c(_PLACES)}? {c(_COUNTS).capitalize()}. "
                f"They're {c(_SIZES)} and {c(_MATERIALS)}.",
        lambda: f"In this photo, the {c(_THINGS)} (about {r.randint(1, 99)} cm) is "
                f"{c(_PLACES)} and the {c(_THINGS)} is {c(_PLACES)}...\n\n",
    )
    return [c(templates)() for _ in range(n_lines)]


# ----------------------------------------------------------------------------- reading ids


def token_spec_from_tokenizer(tok: Tokenizer, *, where: str = "tokenizer") -> TokenSpec:
    """The chat, stop and image token ids of `tok`; `where` names it in errors (e.g. its path)."""
    chat = {s: tok.token_to_id(s) for s in (IM_START, IM_END, EOS)}
    missing = [s for s, i in chat.items() if i is None]
    if missing:
        raise EngineError(
            f"{where} ({tok.get_vocab_size()} tokens): no token {', '.join(missing)} "
            f"(looked for the ChatML tokens {IM_START}, {IM_END}, {EOS}); "
            f"add them as special tokens to tokenizer.json")
    for style in IMAGE_TOKEN_STYLES:
        ids = [tok.token_to_id(s) for s in (style.start, style.pad, style.end)]
        if None not in ids:
            break
    else:
        looked = "; ".join(f"{s.name}: {s.start} {s.pad} {s.end}" for s in IMAGE_TOKEN_STYLES)
        raise EngineError(
            f"{where} ({tok.get_vocab_size()} tokens): no complete set of image placeholder tokens "
            f"(looked for {looked}); add one set as special tokens to tokenizer.json")
    found = {**chat, style.start: ids[0], style.pad: ids[1], style.end: ids[2]}
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    plain = [s for s in found if s not in special]
    if plain:
        raise EngineError(
            f"{where}: {', '.join(plain)} exist but are not special tokens, so prompt text could "
            f"produce them; mark them \"special\": true in tokenizer.json's added_tokens")
    return TokenSpec(
        im_start=IM_START, im_end=IM_END,
        image_start=style.start, image_pad=style.pad, image_end=style.end, eos=EOS,
        im_start_id=chat[IM_START], im_end_id=chat[IM_END],
        image_start_id=ids[0], image_pad_id=ids[1], image_end_id=ids[2], eos_id=chat[EOS],
        stop_ids=(chat[IM_END], chat[EOS]),  # Qwen2-Instruct ends a turn with either
    )
