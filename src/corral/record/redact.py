"""Secret redaction: what is scrubbed before anything reaches the trace, the audit log or the store.

Three rules, applied to every event a run records:

- **registered secrets** — every credential value given to the run
  (``credentials={"tool": {"name": "value"}}``) is replaced wherever it appears in
  a text, whole or inside a longer string. Tool outputs are scrubbed of them too,
  before the model sees them, and of nothing else (:meth:`Redactor.secrets_only`):
  in every shape an output can take — keys, values of any type whose text carries
  one (a PIN ``12345678`` returned as a number becomes the string ``[REDACTED]``:
  the output's type changes, which is the price of never showing it), nested
  containers, bytes, objects whose ``str()`` carries one. Values shorter than
  :data:`MIN_SECRET` characters are not treated as secrets (they would match
  everywhere);
- **sensitive keys** — the value under a key named like a secret (``password``,
  ``api_key``, ``Authorization``, ``access_token``, ``client_secret``, ...; case,
  ``-`` and camelCase do not matter) is replaced whole, unless it is a number, a
  boolean or null;
- **patterns** — text that looks like a credential: ``sk-...`` API keys, Stripe
  secret keys, AWS access key ids, GitHub, Slack and Google tokens, JWTs,
  ``Bearer``/``Basic`` credentials, private key blocks, the password in
  ``scheme://user:password@host`` and the value in ``password=...`` or
  ``"api_key": "..."``.

A policy adds its own keys and patterns (``redact.keys``, ``redact.patterns``).
Each match becomes :data:`REDACTED` (a prefix such as ``Bearer `` or
``password=`` is kept, so the record still says what was there).

>>> r = Redactor(secrets=["hunter2-prod"])
>>> r.text("login failed for hunter2-prod with Bearer abcdefgh12345678")
'login failed for [REDACTED] with Bearer [REDACTED]'
>>> r.data({"api_key": "x", "input_tokens": 12, "url": "https://bob:pw123@db.example/x"})
{'api_key': '[REDACTED]', 'input_tokens': 12, 'url': 'https://bob:[REDACTED]@db.example/x'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

REDACTED = "[REDACTED]"
#: Registered secrets shorter than this are ignored: they would match everywhere.
MIN_SECRET = 4
#: How deep :meth:`Redactor.secrets_only` walks nested containers; deeper is refused.
MAX_DEPTH = 200
#: A cut text ending with this much of a secret's beginning has it redacted
#: (:meth:`Redactor.cut_tail`), or with half the secret, when that is less.
PARTIAL_SECRET = 8
# The characters of any number's text (int, float, Decimal, JSON): a secret made only of
# these can hide in a number; others never can, so numbers are not even turned into text.
_NUMBER_CHARS = frozenset("0123456789+-.eEinfatyINFATYsS")
_LITERALS = ("None", "True", "False", "null", "true", "false")

#: Key names (normalized: lower case, ``_`` between words) whose values are secret; a key
#: also matches when it ends with ``_<name>`` (``x_api_key``, ``github_token``).
DEFAULT_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "auth",
        "cookie",
        "set_cookie",
        "credential",
        "credentials",
        "private_key",
        "access_key",
        "secret_key",
        "signing_key",
        "session_id",
        "sessionid",
    }
)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A built-in pattern, tried only on texts holding one of its ``anchors``.

    Anchors are lower case, looked for in the lower-cased text. ``lower``: the
    pattern itself is written in lower case and matched against the lower-cased
    text (much faster than a case-insensitive pattern). A group named ``keep`` is
    kept in front of the replacement.
    """

    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    lower: bool = False


_RULES: tuple[_Rule, ...] = (
    _Rule(
        ("private key-----",),
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----"
        ),
    ),
    _Rule(("eyj",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    _Rule(
        ("bearer", "basic"),
        re.compile(r"(?P<keep>\b(?:bearer|basic)\s+)[a-z0-9\-._~+/]{8,}=*"),
        lower=True,
    ),
    _Rule(("sk-",), re.compile(r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}")),  # OpenAI, Anthropic
    _Rule(("k_live_", "k_test_"), re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,}")),  # Stripe
    _Rule(
        ("akia", "asia", "abia", "acca"),
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),  # AWS access key id
    ),
    _Rule(
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    ),
    _Rule(("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),  # Slack
    _Rule(("aiza",), re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),  # Google API key
    _Rule(("://",), re.compile(r"(?P<keep>://[^\s/:@]*:)[^\s/@]+(?=@)")),  # URL password
    _Rule(  # a labelled value: password=..., "api_key": "...", X-Auth-Token: ...
        ("pass", "pwd", "secret", "key", "token", "authorization"),
        re.compile(
            r"(?P<keep>(?<![a-z0-9])(?:password|passwd|passphrase|pwd|(?:client[_-]?)?secret"
            r"|(?:api|access|secret|private|signing)[_-]?key|apikey"
            r"|(?:access|auth|refresh|id|api|session)?[_-]?token|authorization)"
            r"\b[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"'&,;]{3,}"
        ),
        lower=True,
    ),
)
#: The shortest text any built-in pattern can match.
_BUILTIN_MIN = 7
_MEMO_MAX_LEN = 64
_MISS = object()
#: Keys whose text values corral computes itself (digests): never secret, never scanned.
VERBATIM_KEYS: frozenset[str] = frozenset({"args_digest", "policy"})
_MEMO_SIZE = 4096
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


_ANCHORS = tuple((anchor, rule) for rule in _RULES for anchor in rule.anchors)


def _builtin(text: str) -> str:
    low = text.lower()
    found = [rule for anchor, rule in _ANCHORS if anchor in low]
    if not found:
        return text
    if len(low) != len(text):  # a character whose lower case is longer: positions differ
        return _builtin_slow(text)
    for rule in dict.fromkeys(found):  # once each, in the rules' order
        spans = [
            (m.end("keep") if "keep" in m.re.groupindex else m.start(), m.end())
            for m in rule.pattern.finditer(low if rule.lower else text)
        ]
        if spans:
            text = _redact_spans(text, spans)
            low = text.lower()
    return text


def _builtin_slow(text: str) -> str:
    for rule in _RULES:
        flags = re.IGNORECASE if rule.lower else 0
        pattern = re.compile(rule.pattern.pattern, flags)
        spans = [
            (m.end("keep") if "keep" in m.re.groupindex else m.start(), m.end())
            for m in pattern.finditer(text)
        ]
        if spans:
            text = _redact_spans(text, spans)
    return text


def _redact_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each ``(kept_until, end)`` span replaced from ``kept_until`` on."""
    parts, last = [], 0
    for kept, end in spans:
        parts.append(text[last:kept])
        parts.append(REDACTED)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def normalize_key(key: str) -> str:
    """``X-Api-Key``, ``apiKey`` and ``api key`` all become ``x_api_key`` / ``api_key``."""
    return _CAMEL.sub("_", key).lower().replace("-", "_").replace(" ", "_")


class Redactor:
    """Scrubs secrets from texts and JSON-like data (see the module docstring).

    ``keys`` and ``patterns`` add to the built-in ones; ``secrets`` are values to
    scrub wherever they appear. Safe to share between threads.
    """

    def __init__(
        self,
        *,
        keys: Iterable[str] = (),
        patterns: Iterable[str | re.Pattern[str]] = (),
        secrets: Iterable[str] = (),
    ) -> None:
        self._keys = DEFAULT_KEYS | {normalize_key(k) for k in keys}
        self._patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in patterns)
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
        self._values = tuple(values)
        self._secrets = re.compile("|".join(map(re.escape, values))) if values else None
        self._numeric = any(set(v) <= _NUMBER_CHARS for v in values)
        self._literals = frozenset(
            lit for lit in _LITERALS if self._secrets is not None and self._secrets.search(lit)
        )
        shortest = min((len(v) for v in values), default=_BUILTIN_MIN)
        self._min = 0 if self._patterns else min(shortest, _BUILTIN_MIN)
        self._key_memo: dict[str, bool] = {}
        self._text_memo: dict[str, str | None] = {}

    @property
    def has_secrets(self) -> bool:
        """Whether any registered secret value is being scrubbed."""
        return self._secrets is not None

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """This redactor plus ``secrets`` (itself when there are none to add)."""
        values = [s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET]
        if not values or set(values) <= set(self._values):
            return self  # a provider resolves the same secrets call after call
        return Redactor(
            keys=self._keys - DEFAULT_KEYS,
            patterns=self._patterns,
            secrets=[*self._values, *values],
        )

    # -- texts ---------------------------------------------------------------------------
    def text(self, text: str) -> str:
        """``text`` with every secret replaced (the same object when nothing matched)."""
        if len(text) < self._min:
            return text
        memo = self._text_memo
        found = memo.get(text, _MISS)
        if found is _MISS:
            result = self._scrub(text)
            if len(text) > _MEMO_MAX_LEN:
                return result
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            found = memo[text] = None if result == text else result
        return text if found is None else found  # type: ignore[return-value]

    def _scrub(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        text = _builtin(text)
        for pattern in self._patterns:
            text = pattern.sub(REDACTED, text)
        return text

    # -- data ----------------------------------------------------------------------------
    def secret_key(self, key: str) -> bool:
        """Whether values under ``key`` are secret (``api_key``, ``X-Auth-Token``, ...)."""
        known = self._key_memo.get(key)
        if known is None:
            name = normalize_key(key)
            known = name in self._keys or any(name.endswith("_" + k) for k in self._keys)
            if len(self._key_memo) < _MEMO_SIZE:
                self._key_memo[key] = known
        return known

    def data(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """``data`` with secrets scrubbed at any depth (the same object when nothing changed)."""
        changed: dict[str, Any] | None = None
        hidden_keys = self._key_memo
        for key, value in data.items():
            kind = type(value)
            if value is None or kind is int or kind is float or kind is bool:
                continue  # numbers are never secret, whatever their key
            if kind is str and key in VERBATIM_KEYS:
                continue
            hidden = hidden_keys.get(key) if type(key) is str else False
            if hidden is None:
                hidden = self.secret_key(key)
            if hidden and _hides(value):
                new: Any = REDACTED
            elif kind is str:
                new = self.text(value)
            else:
                new = self.value(value)
            if new is not value:
                if changed is None:
                    changed = dict(data)
                changed[key] = new
        return data if changed is None else changed

    def value(self, value: Any) -> Any:
        """Any JSON-like value with secrets scrubbed (the same object when nothing changed)."""
        kind = type(value)
        if kind is str:
            return self.text(value)
        if value is None or kind is int or kind is float or kind is bool:
            return value
        if isinstance(value, Mapping):
            return self.data(value)
        if isinstance(value, list | tuple):
            items = [self.value(v) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items
        if isinstance(value, str):
            return self.text(str(value))
        return value

    def secrets_only(self, value: Any) -> Any:
        """``value`` with the registered secret values scrubbed, and nothing else changed.

        For tool outputs: the model must never see a credential, but a pattern that
        merely looks like one may be the data it asked for. Total over shapes: text
        anywhere (keys too), and any other value whose text (``str``, ``repr``, its
        JSON form) carries a secret becomes that text, scrubbed. Containers keep their
        type (a mapping becomes a dict); two keys scrubbed to the same text are kept
        apart (``[REDACTED] (2)``). The same object is returned when nothing changed.
        Raises ``ValueError`` for containers nested deeper than :data:`MAX_DEPTH`.
        """
        if self._secrets is None:
            return value
        return self._only(value, 0)

    def _hit(self, text: str) -> bool:
        return self._secrets is not None and self._secrets.search(text) is not None

    def _sub(self, text: str) -> str:
        return text if self._secrets is None else self._secrets.sub(REDACTED, text)

    def _only(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self._sub(value)
        if value is None or kind is bool:
            return REDACTED if self._literals and _literal_hit(value, self._literals) else value
        if kind is int or kind is float:
            if not self._numeric:
                return value
            text = repr(value)
            return self._sub(text) if self._hit(text) else value
        if depth >= MAX_DEPTH:
            raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, list | tuple | set | frozenset):
            items = [self._only(v, depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            if isinstance(value, list):
                return items
            if isinstance(value, set | frozenset):
                return _rebuilt(value, items)
            if hasattr(value, "_fields"):  # a named tuple keeps its type
                return type(value)(*items)
            return tuple(items)
        return self._other(value)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> Any:
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            new_key = key
            if type(key) is str:
                new_key = self._sub(key)
            elif not isinstance(key, str | int | float | bool) and key is not None:
                new_key = self._sub(_text(key)) if self._hit(_text(key)) else key
            else:
                found = self._only(key, depth + 1)
                new_key = found if found is key else str(found)
            if new_key in out:  # only a renamed key can meet another (or be met by one)
                n = 2
                while f"{new_key} ({n})" in out:
                    n += 1
                new_key = f"{new_key} ({n})"
            new = self._only(item, depth + 1)
            changed = changed or new_key is not key or new is not item
            out[new_key] = new
        return out if changed else value

    def _other(self, value: Any) -> Any:
        """A value of any other type: its text, scrubbed, when the text carries a secret."""
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            text = raw.decode("utf-8", "backslashreplace")
            return self._sub(text) if self._hit(text) or self._hit(repr(raw)) else value
        text = _text(value)
        if isinstance(value, str | int | float):  # subclasses: their plain form shows too
            plain = str.__str__(value) if isinstance(value, str) else repr(_plain_number(value))
            if self._hit(plain):
                return self._sub(plain)
        if self._hit(text) or self._hit(_text(value, repr)):
            return self._sub(text)
        return value

    def cut_tail(self, text: str, limit: int | None = None) -> str:
        """``text``, cut from a longer one, with a trailing beginning of a registered
        secret (:data:`PARTIAL_SECRET` characters of it, or half of it) replaced by
        :data:`REDACTED`; at most ``limit`` characters when given."""
        while True:
            start = self._partial_start(text)
            if start is None:
                return text
            if limit is None or start + len(REDACTED) <= limit:
                return text[:start] + REDACTED
            text = text[:start]  # no room for the marker: drop the piece, look at the new end

    def _partial_start(self, text: str) -> int | None:
        start = None
        for secret in self._values:
            least = min(PARTIAL_SECRET, (len(secret) + 1) // 2)
            for n in range(min(len(secret) - 1, len(text)), least - 1, -1):
                if text.endswith(secret[:n]):
                    at = len(text) - n
                    start = at if start is None else min(start, at)
                    break
        return start


def _literal_hit(value: Any, literals: frozenset[str]) -> bool:
    """Whether ``None``/``True``/``False`` is written (in Python or JSON) as a secret."""
    forms = {None: ("None", "null"), True: ("True", "true"), False: ("False", "false")}
    return any(form in literals for form in forms[value])


def _rebuilt(value: set[Any] | frozenset[Any], items: list[Any]) -> Any:
    try:
        return type(value)(items)
    except TypeError:  # an item became unhashable: the set's JSON form, a list
        return items


def _plain_number(value: int | float) -> int | float:
    return int(value) if isinstance(value, int) else float(value)


def _text(value: Any, how: Any = str) -> str:
    """``str(value)`` (or ``repr``), or a placeholder when it cannot be made: a value whose
    text cannot be read cannot be shown either."""
    try:
        return str(how(value))
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def _hides(value: Any) -> bool:
    """Whether a value under a secret key is replaced: anything but numbers, booleans, null."""
    return not (value is None or isinstance(value, bool | int | float))


_BY_RULES: dict[tuple[tuple[str, ...], tuple[str, ...]], Redactor] = {}


def redactor(keys: Iterable[str] = (), patterns: Iterable[str] = ()) -> Redactor:
    """The (shared) redactor with these extra keys and patterns."""
    wanted = (tuple(keys), tuple(patterns))
    found = _BY_RULES.get(wanted)
    if found is None:
        if len(_BY_RULES) >= 64:
            _BY_RULES.clear()
        found = _BY_RULES[wanted] = Redactor(keys=wanted[0], patterns=wanted[1])
    return found


DEFAULT = Redactor()
