"""The web app: server-rendered pages (Jinja2 + htmx) served by the API's process under ``/``.

Pages read through the same :class:`~datamill.service.Service` and access checks as the REST
API. One module per page group (``folders``, ``items``, ...), each with an ``APIRouter`` listed in
:data:`datamill.web.app.PAGES`; ``session`` signs browsers in and out, ``csrf`` guards every
state-changing request, ``render`` turns templates into responses, ``errors`` answers failures
as pages. See docs/web.md.
"""
