"""Generated token ids -> text deltas for streaming, with OpenAI stop sequences.

Text is decoded from all ids so far (a byte-level BPE token can be half a UTF-8 character, so
per-token decoding would garble text). A delta never ends in a replacement character that the
next token may complete, and never includes text that may be the start of a stop sequence: a
client never sees any part of a stop string.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""          # text of all ids
        self.sent = 0           # characters already handed out
        self.stopped = False    # a stop string was found; text ends before it

    def push(self, token: int) -> str:
        """Add one token -> the new text that is safe to hand out (maybe "")."""
        self.ids.append(int(token))
        self.text = self.decode(self.ids)
        hits = [i for s in self.stops if (i := self.text.find(s, max(0, self.sent - len(s) + 1))) >= 0]
        if hits:
            cut = min(hits)
            self.text, self.stopped = self.text[:cut], True
            return self._take(cut)
        safe = len(self.text)
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text[:safe].endswith(s[:k])),
                   default=0)
        return self._take(max(self.sent, safe - hold))

    def flush(self) -> str:
        """The rest of the text when generation ends without a stop string."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out = self.text[self.sent:upto]
        self.sent = max(self.sent, upto)
        return out
