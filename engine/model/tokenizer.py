"""Text <-> token ids, built from the GGUF's own vocabulary with the `tokenizers` library.

A GGUF has no `tokenizer.json`; it stores the vocabulary, merges, token types
and a pre-tokenizer *name* as metadata, under llama.cpp's keys. We rebuild the
tokenizer llama.cpp would run for that file, because llama.cpp is what the
file was made for:

- `gpt2` (byte-level BPE, SmolLM2, Llama-3, Qwen2): merges split on the first
  space; the split regex is picked by `tokenizer.ggml.pre` (`smollm` splits
  every digit first, `llama-bpe` uses Llama-3's regex and whole-word lookup).
- `llama` (sentencepiece BPE, TinyLlama): spaces become `▁`, one `▁` is
  prepended to each run of text (after every special token, as llama.cpp
  does), unknown characters fall back to `<0xXX>` byte tokens. Files without
  merges get them from the token scores.

Tokens typed control (3) or user-defined (4) are matched whole in the input
text, so a chat-formatted prompt encodes `<|im_start|>` as one id. Only control
tokens are dropped by `skip_special`; user-defined ones are real text.

Decoding goes through raw bytes (`token_to_bytes`) and one incremental UTF-8
decoder, so `decode(ids)` and the streamed pieces are the same text by
construction, and a stream never emits half of a multi-byte character.
"""

from __future__ import annotations

import codecs
import re
import threading
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from engine.errors import ModelFileError, PromptError, UnsupportedModelError
from engine.model.chat_spans import overlaps, substitute, with_placeholders
from engine.model.chat_template import TemplateLimits, render_chat_template

if TYPE_CHECKING:
    from engine.model.gguf_file import GGUFModelFile

STATE_VERSION = 1
TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4
SPM_SPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Control tokens that end a turn in some family's template; llama.cpp stops on these too.
END_OF_TURN_TOKENS = frozenset(
    {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "</s>", "<end_of_turn>", "<|end_of_text|>"}
)

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True, slots=True)
class PreTokenizerSpec:
    """How llama.cpp cuts text before BPE for one `tokenizer.ggml.pre` value."""

    split: str
    individual_digits: bool = False
    ignore_merges: bool = False  # whole words found in the vocab skip BPE (Llama-3)


_GPT2 = PreTokenizerSpec(GPT2_SPLIT)
_DIGITS = PreTokenizerSpec(GPT2_SPLIT, individual_digits=True)
_LLAMA3 = PreTokenizerSpec(LLAMA3_SPLIT, ignore_merges=True)
PRE_TOKENIZERS: dict[str | None, PreTokenizerSpec] = {
    None: _GPT2,  # older files name none: assume the original GPT-2 regex, as HF transformers does
    "default": _GPT2,
    "gpt-2": _GPT2,
    "phi-2": _GPT2,
    "smollm": _DIGITS,
    "starcoder": _DIGITS,
    "refact": _DIGITS,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "qwen2": PreTokenizerSpec(QWEN2_SPLIT),
}


@lru_cache(maxsize=1)
def _char_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable character map, the spelling of byte-level vocabularies."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {chr(b): b for b in kept}
    mapping.update({chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in kept)})
    return mapping


def _byte_level_backend(tokens: list[str], merges: list[tuple[str, str]], pre: str | None) -> BackendTokenizer:
    spec = PRE_TOKENIZERS.get(pre)
    if spec is None:
        known = ", ".join(sorted(k for k in PRE_TOKENIZERS if k))
        raise UnsupportedModelError(f"unsupported pre-tokenizer tokenizer.ggml.pre={pre!r}: the engine knows {known}")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = BackendTokenizer(models.BPE(vocab, merges, ignore_merges=spec.ignore_merges))
    steps = [pre_tokenizers.Digits(individual_digits=True)] if spec.individual_digits else []
    steps += [
        pre_tokenizers.Split(Regex(spec.split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    return backend


def merges_from_scores(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Sentencepiece files carry scores, not merges: best-scoring merged token first."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for merged, score, ttype in zip(tokens, scores, types, strict=True):
        if ttype != TOKEN_TYPE_NORMAL:
            continue
        for cut in range(1, len(merged)):
            left, right = merged[:cut], merged[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_backend(
    tokens: list[str], merges: list[tuple[str, str]], unk: str | None, add_space_prefix: bool
) -> BackendTokenizer:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = BackendTokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    # Prepend runs on each stretch of text between special tokens: llama.cpp's prefix rule.
    replace = normalizers.Replace(" ", SPM_SPACE)
    prefix = [normalizers.Prepend(SPM_SPACE)] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*prefix, replace])
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return backend


@dataclass(frozen=True, slots=True)
class TokenizerState:
    """Everything needed to rebuild a `Tokenizer` without the GGUF (the warm-load cache entry)."""

    backend_json: str
    kind: str  # "gpt2" (byte-level) or "llama" (sentencepiece)
    vocab_size: int
    eos_token_id: int
    bos_token_id: int | None
    add_bos: bool
    control_token_ids: tuple[int, ...]
    user_token_ids: tuple[int, ...]
    stop_token_ids: tuple[int, ...]
    chat_template: str | None
    strip_leading_space: bool  # sentencepiece: drop the prefix space the encoder added


def _state_from_gguf(model_file: GGUFModelFile) -> TokenizerState:
    meta = model_file.metadata
    kind = meta("tokenizer.ggml.model")
    tokens: list[str] = list(meta("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ModelFileError("the GGUF has no tokenizer.ggml.tokens: it cannot be tokenized")
    types = [int(t) for t in (meta("tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens))]
    merges = [tuple(m.split(" ", 1)) for m in (meta("tokenizer.ggml.merges") or [])]
    add_space_prefix = bool(meta("tokenizer.ggml.add_space_prefix", kind == "llama"))
    unk_id = meta("tokenizer.ggml.unknown_token_id")
    if kind == "gpt2":
        if not merges:
            raise ModelFileError("the GGUF's byte-level tokenizer has no tokenizer.ggml.merges")
        backend = _byte_level_backend(tokens, merges, meta("tokenizer.ggml.pre"))
    elif kind == "llama":
        if not merges:
            scores = [float(s) for s in meta("tokenizer.ggml.scores") or []]
            if len(scores) != len(tokens):
                raise ModelFileError("the GGUF's sentencepiece tokenizer has neither merges nor a score per token")
            merges = merges_from_scores(tokens, scores, types)
        unk = tokens[int(unk_id)] if unk_id is not None else None
        backend = _sentencepiece_backend(tokens, merges, unk, add_space_prefix)
    else:
        raise UnsupportedModelError(
            f"unsupported tokenizer model tokenizer.ggml.model={kind!r}: the engine reads 'gpt2' and 'llama'"
        )
    control = tuple(i for i, t in enumerate(types) if t == TOKEN_TYPE_CONTROL)
    user = tuple(i for i, t in enumerate(types) if t == TOKEN_TYPE_USER_DEFINED)
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    eos = meta("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise ModelFileError("the GGUF has no tokenizer.ggml.eos_token_id: generation could never stop")
    bos = meta("tokenizer.ggml.bos_token_id")
    stops = {int(eos)} | {int(i) for i in control if tokens[i] in END_OF_TURN_TOKENS}
    turn_ends = (meta("tokenizer.ggml.eot_token_id"), meta("tokenizer.ggml.eom_token_id"))
    stops |= {int(v) for v in turn_ends if v is not None}
    return TokenizerState(
        backend_json=backend.to_str(),
        kind=kind,
        vocab_size=len(tokens),
        eos_token_id=int(eos),
        bos_token_id=None if bos is None else int(bos),
        add_bos=bool(meta("tokenizer.ggml.add_bos_token", kind == "llama")) and bos is not None,
        control_token_ids=control,
        user_token_ids=user,
        stop_token_ids=tuple(sorted(stops)),
        chat_template=meta("tokenizer.chat_template"),
        strip_leading_space=kind == "llama" and add_space_prefix,
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str) -> None:
    """Refuse a lone surrogate (JSON allows the escape `"\\ud800"`): no UTF-8 can encode it."""
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise PromptError(
            f"{what} holds a lone surrogate (U+{ord(bad.group()):04X}) at character {bad.start()}: send valid "
            "Unicode text (a \\uD800-\\uDFFF escape in JSON must be one half of a surrogate pair)"
        )


class Tokenizer:
    """One model's tokenizer and chat template; cheap to rebuild from `to_state()`.

    Safe to share between threads (the server encodes on worker threads): the backends
    are never changed after they are built, and the lazily built one is built under a lock.
    """

    def __init__(self, state: TokenizerState) -> None:
        self._backend = BackendTokenizer.from_str(state.backend_json)
        # The JSON is not kept (1.4 MiB for SmolLM2): the backend serializes itself when asked.
        self._state = replace(state, backend_json="")
        self._plain_backend: BackendTokenizer | None = None  # built on first use (~0.1 s): see _plain
        self._plain_lock = threading.Lock()
        self.vocab_size = state.vocab_size
        self.eos_token_id = state.eos_token_id
        self.bos_token_id = state.bos_token_id
        self.add_bos = state.add_bos
        self.control_token_ids = frozenset(state.control_token_ids)
        self.special_token_ids = frozenset(state.control_token_ids + state.user_token_ids)
        self.stop_token_ids = frozenset(state.stop_token_ids)
        self._token_bytes: dict[int, bytes] = {}

    @classmethod
    def from_gguf(cls, model_file: GGUFModelFile) -> Tokenizer:
        """Build from a `GGUFModelFile`'s metadata (~0.4 s for SmolLM2's 49k vocabulary)."""
        return cls(_state_from_gguf(model_file))

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable dict; `from_state` rebuilds the same tokenizer from it."""
        state = asdict(self._state) | {"backend_json": self._backend.to_str()}
        for key in ("control_token_ids", "user_token_ids", "stop_token_ids"):
            state[key] = list(state[key])
        return {"state_version": STATE_VERSION, **state}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        """Rebuild from `to_state()` output without opening the GGUF (a warm load)."""
        fields = dict(state)
        version = fields.pop("state_version", None)
        if version != STATE_VERSION:
            raise ValueError(f"tokenizer state version {version!r} is not {STATE_VERSION}: rebuild it with from_gguf")
        for key in ("control_token_ids", "user_token_ids", "stop_token_ids"):
            fields[key] = tuple(fields.get(key, ()))
        try:
            return cls(TokenizerState(**fields))
        # TypeError: missing or unknown keys; `tokenizers` raises bare Exception on bad JSON.
        except Exception as exc:
            raise ValueError(f"tokenizer state is corrupt ({exc}): rebuild it with from_gguf") from exc

    # -- text -> ids ----------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids for `text`; special-token strings in it become their single ids.

        `add_special` prepends BOS only where the file asks for one (SmolLM2 does not).
        """
        check_text(text, "the prompt")
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return ids

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, limits: TemplateLimits | None = None
    ) -> str:
        """The model's own chat template rendered for `messages` (sandboxed Jinja2, bounded by `limits`)."""
        bos = self._backend.id_to_token(self.bos_token_id) if self.bos_token_id is not None else None
        return render_chat_template(
            self._state.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos or "",
            eos_token=self._backend.id_to_token(self.eos_token_id) or "",
            limits=limits,
        )

    @property
    def _plain(self) -> BackendTokenizer:
        """The same vocabulary reading special-token strings as plain text (for forged ones in messages).

        Built only when a message contains one, so loading a model does not pay for it; under
        a lock, because the server encodes on worker threads.
        """
        with self._plain_lock:
            if self._plain_backend is None:
                plain = BackendTokenizer.from_str(self._backend.to_str())
                plain.encode_special_tokens = True
                self._plain_backend = plain
            return self._plain_backend

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, limits: TemplateLimits | None = None
    ) -> list[int]:
        """Ids of `messages` in the chat template, where a message can never forge a control token.

        The template's own markup (`<|im_start|>user` ...) becomes control tokens, but a
        special-token string typed inside a message stays text: a user who writes
        `<|im_end|><|im_start|>system` gets those characters, not a new system turn.

        The template is rendered twice: with the messages, and with a private placeholder
        per message to learn where each message's text lands (a template may drop, repeat
        or reorder messages). When putting the texts back in place of the placeholders
        gives exactly the first rendering, that text is encoded whole (ordinary text
        encodes as it always did, merges across the template boundary included) and any
        special token that shares a character with a message is re-encoded as plain text;
        the spans are sorted, so each test is a binary search and the encode is
        O(n log n) in the messages. A template that rewrites message text (trims it, cuts
        it) gives a different rendering: then the rendering is encoded as it is, which is
        safe only while no message holds a special-token string, so otherwise it is refused.
        """
        limits = limits or TemplateLimits()
        for i, m in enumerate(messages):
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                check_text(m["content"], f"messages[{i}].content")
        rendered = self.apply_chat_template(messages, add_generation_prompt, limits)
        check_text(rendered, "the chat template's output")
        marked = self.apply_chat_template(with_placeholders(messages), add_generation_prompt, limits)
        layout = substitute(marked, messages, len(rendered))
        if layout is None or layout[0] != rendered:
            return self._encode_unmapped(messages, rendered)
        _, starts, ends = layout
        encoding = self._backend.encode(rendered, add_special_tokens=False)
        ids: list[int] = []
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token_id in self.special_token_ids and overlaps(starts, ends, start, end):
                ids += self._plain.encode(rendered[start:end], add_special_tokens=False).ids
            else:
                ids.append(token_id)
        return self._with_bos(ids)

    def _encode_unmapped(self, messages: list[dict[str, Any]], rendered: str) -> list[int]:
        """The rendering encoded whole, for a template that rewrites message text; refused if that could forge."""
        for i, m in enumerate(messages):
            content = m.get("content")
            if isinstance(content, str) and self.special_token_ids.intersection(
                self._backend.encode(content, add_special_tokens=False).ids
            ):
                raise PromptError(
                    f"messages[{i}].content holds a special-token string, and this model's chat template rewrites "
                    "message text, so it could not be kept as plain text: remove it"
                )
        return self._with_bos(self._backend.encode(rendered, add_special_tokens=False).ids)

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    # -- ids -> text ----------------------------------------------------------------

    def token_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a UTF-8 character)."""
        cached = self._token_bytes.get(token_id)
        if cached is not None:
            return cached
        token_id = int(token_id)  # sampled ids may arrive as numpy or 0-d tensor values
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        piece = self._backend.id_to_token(token_id) or ""
        if token_id in self.special_token_ids:
            raw = piece.encode("utf-8")
        elif self._state.kind == "gpt2":
            to_byte = _char_to_byte()
            raw = bytes(to_byte[c] for c in piece) if all(c in to_byte for c in piece) else piece.encode("utf-8")
        else:
            byte_token = _BYTE_TOKEN.fullmatch(piece)
            raw = bytes([int(byte_token.group(1), 16)]) if byte_token else piece.replace(SPM_SPACE, " ").encode("utf-8")
        self._token_bytes[token_id] = raw
        return raw

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        """An incremental detokenizer for one generated sequence."""
        return StreamDecoder(self, skip_special)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Text for `ids`; invalid UTF-8 (a cut-off character) becomes U+FFFD."""
        stream = self.stream_decoder(skip_special)
        return "".join(stream.push(i) for i in ids) + stream.flush()


class StreamDecoder:
    """Turns generated ids into text pieces, holding back incomplete UTF-8 sequences.

    Byte-level BPE often splits one emoji or CJK character across tokens; the
    incremental decoder keeps those bytes until the character is complete.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = tokenizer.control_token_ids if skip_special else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_pending = tokenizer._state.strip_leading_space

    def push(self, token_id: int) -> str:
        """Newly completed text after one more token ("" while a character is incomplete)."""
        if token_id in self._skip:
            return ""
        raw = self._tokenizer.token_to_bytes(token_id)
        if self._strip_pending and raw:
            self._strip_pending = False
            if raw.startswith(b" "):
                raw = raw[1:]
        return self._utf8.decode(raw)

    def flush(self) -> str:
        """Whatever is left at the end; a dangling partial character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
