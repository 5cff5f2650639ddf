"""Makes a message's HTML part safe to show: an allow-list of tags, no scripts, no remote images, no forms."""

from __future__ import annotations

import nh3

# Text structure and formatting only. No <form>/<input>/<button> (phishing), no <img> (remote
# images are tracking beacons and inline cid: images would need the parts served too), no
# <style>, <link>, <iframe>, <object>, <svg>, <math>, <base>, <meta>: nh3 drops them with their
# content where that content is code (script, style).
ALLOWED_TAGS = {
    "a", "abbr", "b", "bdi", "bdo", "blockquote", "br", "caption", "cite", "code", "col", "colgroup",
    "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "h1", "h2",
    "h3", "h4", "h5", "h6", "hr", "i", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
    "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "time", "tr", "tt", "u", "ul", "var", "center",
}
# No style attribute: CSS can load remote resources (url(), @import) and overlay fake UI.
ALLOWED_ATTRIBUTES = {
    "*": {"title", "lang", "dir"},
    "a": {"href"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign", "scope"},
    "table": {"summary"},
    "ol": {"start", "type"},
    "font": {"color"},
    "p": {"align"},
    "div": {"align"},
    "col": {"span"},
    "colgroup": {"span"},
    "time": {"datetime"},
}
URL_SCHEMES = {"http", "https", "mailto"}


def sanitize_html(html: str) -> str:
    """The HTML with everything outside the allow-list removed; links open outside the frame, without referrer."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style", "noscript", "template", "title", "textarea", "select", "option"},
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
