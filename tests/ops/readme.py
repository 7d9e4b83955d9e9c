"""The README's shell commands, as the tests that check and run them read them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
# inline spans worth checking start with one of these
INLINE = re.compile(
    r"^(make|artifact-search|python -m|kubectl|helm|docker (build|compose)|deploy/\S+\.sh) "
)


def blocks() -> list[tuple[int, str]]:
    """The README's ```bash blocks: (line of the opening fence, text)."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S)
    ]


def commands(text: str) -> list[list[str]]:
    """Shell text -> commands as token lists (continuations joined, comments dropped, split
    on ; && || | &, leading VAR=value assignments removed)."""
    text = text.replace("\\\n", " ")
    # one pass over the whole text: a quoted argument may span lines; a newline outside
    # quotes ends a command like ; does
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""  # shlex's comments would swallow the newline that ends a command
    commands: list[list[str]] = [[]]
    comment = False
    for token in lexer:
        if set(token) <= set(";&|\n"):
            comment = comment and "\n" not in token
            if not comment:
                commands.append([])
        elif comment or token.startswith("#"):
            comment = True
        else:
            commands[-1].append(token)
    result = []
    for cmd in commands:
        while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            result.append(cmd)
    return result


def readme_commands() -> list[list[str]]:
    """The README's commands: its bash blocks whole, its inline spans that look like one."""
    text = README.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [s for s in re.findall(r"`([^`\n]+)`", prose) if INLINE.match(s)]
    return [cmd for chunk in [*(b for _, b in blocks()), *spans] for cmd in commands(chunk)]
