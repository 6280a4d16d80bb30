"""Format rules for `<think>...</think><answer>...</answer>` responses.

The rule, as in Logic-RL and the R1 reproductions: each required tag occurs exactly once and in
order. Tags that the prompt already supplied (a chat template or recipe that pre-fills
`<think>` after the assistant header) count as present: the check runs on `prefix + completion`,
so a pre-filled `<think>` is never required again, and writing it a second time is a repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# End-of-turn markers some models emit as text; they are not "text after </answer>".
_END_MARKERS = re.compile(r"(<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|</s>|<eos>)\s*$")


@dataclass(frozen=True)
class FormatResult:
    ok: bool
    reason: str  # "" when ok, else a short reason for metrics and samples files
    answer: str | None  # the content of the last <answer> block, if any (format aside)


def last_answer_block(text: str) -> str | None:
    """Content of the last complete <answer>...</answer> block, stripped; None when absent.

    The last closing tag, and the last opening tag before it: two linear scans (a lazy regex is
    quadratic on 100 KB of unclosed tags). The tasks' one answer-block parser (knights_knaves and
    countdown judge this block); with each tag once, it is the block a regex would find.
    """
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>") : end].strip()


def check_format(
    completion: str,
    prefix: str = "",
    tags: tuple[str, ...] = ("think", "answer"),
    allow_text_after: bool = False,
) -> FormatResult:
    """Judge the format of `completion` given the response `prefix` the prompt supplied.

    Every tag in `tags` must open and close exactly once, in the order given, with the closing
    tag after its opening tag; with allow_text_after=False nothing but whitespace (and an
    end-of-turn marker) may follow the last closing tag.
    """
    text = prefix + completion
    answer = last_answer_block(text)
    position = 0
    for tag in tags:
        for marker in (f"<{tag}>", f"</{tag}>"):
            count = text.count(marker)
            if count != 1:
                what = "missing" if count == 0 else f"repeated {count} times"
                return FormatResult(False, f"{marker} {what}", answer)
            found = text.index(marker)
            if found < position:
                return FormatResult(False, f"{marker} out of order", answer)
            position = found + len(marker)
    if not allow_text_after and tags:
        tail = _END_MARKERS.sub("", text[position:]).strip()
        if tail:
            return FormatResult(False, "text after the last closing tag", answer)
    return FormatResult(True, "", answer)
