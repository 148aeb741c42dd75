"""An amount in satang as Thai words, the way Thai cheques and statements print it
(like Excel's BAHTTEXT): 123450 -> "หนึ่งพันสองร้อยสามสิบสี่บาทห้าสิบสตางค์",
100 -> "หนึ่งบาทถ้วน"."""

from __future__ import annotations

_DIGITS = ("ศูนย์", "หนึ่ง", "สอง", "สาม", "สี่", "ห้า", "หก", "เจ็ด", "แปด", "เก้า")
_PLACES = ("", "สิบ", "ร้อย", "พัน", "หมื่น", "แสน")
_MILLION = "ล้าน"


def _group(n: int, *, has_higher: bool) -> str:
    """Reads 0 <= n < 1,000,000. `has_higher`: a larger ล้าน group precedes it,
    so a lone final 1 is still read เอ็ด (1,000,001 = หนึ่งล้านเอ็ด)."""
    digits = [int(c) for c in str(n)][::-1]
    words = []
    for place in range(len(digits) - 1, -1, -1):
        d = digits[place]
        if d == 0:
            continue
        if place == 0:
            words.append("เอ็ด" if d == 1 and (n > 1 or has_higher) else _DIGITS[d])
        elif place == 1:
            words.append({1: "", 2: "ยี่"}.get(d, _DIGITS[d]) + _PLACES[1])
        else:
            words.append(_DIGITS[d] + _PLACES[place])
    return "".join(words)


def _integer_words(n: int) -> str:
    if n == 0:
        return _DIGITS[0]
    groups = []
    while n:
        n, g = divmod(n, 1_000_000)
        groups.append(g)
    out = []
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g:
            out.append(_group(g, has_higher=i < len(groups) - 1))
        if i:
            out.append(_MILLION)
    return "".join(out)


def baht_text(satang: int) -> str:
    if not isinstance(satang, int) or isinstance(satang, bool):
        raise TypeError("amount must be an int number of satang")
    if satang < 0:
        return "ลบ" + baht_text(-satang)
    baht, st = divmod(satang, 100)
    if st == 0:
        return _integer_words(baht) + "บาทถ้วน"
    satang_words = _integer_words(st) + "สตางค์"
    if baht == 0:
        return satang_words
    return _integer_words(baht) + "บาท" + satang_words
