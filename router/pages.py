"""The plain, branded error pages end users see, rendered into nginx's config.

Each carries the request id (nginx fills in ``$bae_request_id`` and ``$host``).
"""

from __future__ import annotations

__all__ = ["PAGES", "page"]

_TEMPLATE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
    "<style>body{{font:16px/1.5 system-ui,sans-serif;margin:15vh auto;max-width:36em;color:#222}}"
    "h1{{font-size:1.4em}}code{{color:#666}}</style></head><body>"
    "<h1>{title}</h1><p>{text}</p><p><code>request id $bae_request_id</code> &middot; bae</p></body></html>\n"
)

PAGES = {
    404: ("No such app", "There is no app at <b>$host</b>. Check the address, or ask its owner."),
    502: ("Bad gateway", "The app at <b>$host</b> did not answer properly. Try again in a moment."),
    503: ("Application unavailable", "No web unit of the app at <b>$host</b> is running right now "
          "(scaled to zero, crashed, or still starting). Try again in a moment."),
    504: ("Gateway timeout", "The app at <b>$host</b> took too long to answer."),
}


def page(status: int) -> str:
    title, text = PAGES[status]
    return _TEMPLATE.format(title=title, text=text)
