"""Thai by default, English switchable: gettext catalogues (.po, compiled in
memory at start: no .mo in the repository) and one Jinja2 environment per
language with the i18n extension."""

from __future__ import annotations

import functools
import gettext
import io
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from jinja2 import Environment, PackageLoader, select_autoescape

from iclaim_portal import formatting

LOCALES = ("th", "en")
DEFAULT_LOCALE = "th"
CATALOGUES = Path(__file__).parent / "locale"


@functools.cache
def translations(locale: str) -> gettext.NullTranslations:
    """English is the source language (msgids); other languages from their .po."""
    po = CATALOGUES / locale / "LC_MESSAGES" / "messages.po"
    if not po.exists():
        return gettext.NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=locale)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def environments() -> dict[str, Environment]:
    envs: dict[str, Environment] = {}
    for locale in LOCALES:
        env = Environment(
            loader=PackageLoader("iclaim_portal", "templates"),
            autoescape=select_autoescape(["html"]),
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
        env.globals["locale"] = locale
        env.filters["baht"] = formatting.baht
        env.filters["baht_words"] = formatting.amount_in_words
        env.filters["date"] = lambda v, loc=locale: formatting.local_date(v, loc) if v else ""
        env.filters["month"] = lambda v, loc=locale: formatting.local_month(v, loc)
        env.filters["datetime"] = lambda v, loc=locale: formatting.local_datetime(v, loc) if v else ""
        envs[locale] = env
    return envs
