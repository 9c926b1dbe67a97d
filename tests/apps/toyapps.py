"""Small CLAMS apps (and one plain HTTP app) the tests and benchmarks run as real HTTP servers.

``python toyapps.py tokenizer --port 5001``: ``tokenizer`` splits TextDocuments into Tokens,
``counter`` counts the last Token view, ``upper`` adds the upper-cased text of each token,
``broken`` always raises (an MMIF error view). ``echo`` is a plain HTTP app (no CLAMS): it answers
``POST /`` with the body upper-cased, needs ``Authorization: Bearer s3cret``, says its version on
``GET /version``, and ``POST /flaky`` answers 503 to every other request.
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import threading
from typing import Any


def clams_app(kind: str) -> Any:
    """The CLAMS app called ``kind`` (clams-python imported here: the echo app needs none of it)."""
    from clams import AppMetadata, ClamsApp
    from mmif import AnnotationTypes, DocumentTypes, Mmif

    def metadata(name: str, ident: str) -> AppMetadata:
        return AppMetadata(
            name=name,
            description=f"{name} (a datamill test app)",
            app_license="MIT",
            identifier=f"http://example.org/apps/{ident}",
            url=f"http://example.org/apps/{ident}",
        )

    class Tokenizer(ClamsApp):
        def _appmetadata(self) -> AppMetadata:
            md = metadata("Toy Tokenizer", "toy-tokenizer")
            md.add_input(DocumentTypes.TextDocument)
            md.add_output(AnnotationTypes.Token)
            md.add_parameter(name="lowercase", description="lowercase tokens", type="boolean", default=False)
            return md

        def _annotate(self, mmif: Mmif, **params: Any) -> Mmif:
            for doc in mmif.get_documents_by_type(DocumentTypes.TextDocument):
                text = doc.text_value
                view = mmif.new_view()
                self.sign_view(view, params)
                view.new_contain(AnnotationTypes.Token, document=doc.id)
                pos = 0
                for word in text.split():
                    start = text.index(word, pos)
                    end = pos = start + len(word)
                    view.new_annotation(
                        AnnotationTypes.Token, start=start, end=end, text=word.lower() if params["lowercase"] else word
                    )
            return mmif

    class Counter(ClamsApp):
        def _appmetadata(self) -> AppMetadata:
            md = metadata("Toy Token Counter", "toy-counter")
            md.add_input(AnnotationTypes.Token)
            md.add_output(AnnotationTypes.Annotation)
            md.add_parameter(name="label", description="label", type="string", default="count")
            return md

        def _annotate(self, mmif: Mmif, **params: Any) -> Mmif:
            src = mmif.get_view_contains(AnnotationTypes.Token)
            if src is None:
                raise ValueError("no Token view in input MMIF (run the tokenizer first)")
            tokens = list(src.get_annotations(AnnotationTypes.Token))
            doc_id = src.metadata.contains[AnnotationTypes.Token]["document"]
            view = mmif.new_view()
            self.sign_view(view, params)
            view.new_contain(AnnotationTypes.Annotation, document=doc_id)
            view.new_annotation(
                AnnotationTypes.Annotation, label=params["label"], tokenCount=len(tokens), sourceView=src.id
            )
            return mmif

    class Upper(ClamsApp):
        def _appmetadata(self) -> AppMetadata:
            md = metadata("Toy Upper", "toy-upper")
            md.add_input(AnnotationTypes.Token)
            md.add_output(AnnotationTypes.Annotation)
            return md

        def _annotate(self, mmif: Mmif, **params: Any) -> Mmif:
            src = mmif.get_view_contains(AnnotationTypes.Token)
            if src is None:
                raise ValueError("no Token view in input MMIF (run the tokenizer first)")
            doc_id = src.metadata.contains[AnnotationTypes.Token]["document"]
            view = mmif.new_view()
            self.sign_view(view, params)
            view.new_contain(AnnotationTypes.Annotation, document=doc_id)
            for tok in src.get_annotations(AnnotationTypes.Token):
                view.new_annotation(
                    AnnotationTypes.Annotation, label="upper", value=str(tok.get_property("text")).upper()
                )
            return mmif

    class Broken(ClamsApp):
        def _appmetadata(self) -> AppMetadata:
            md = metadata("Toy Broken", "toy-broken")
            md.add_input(DocumentTypes.TextDocument)
            md.add_output(AnnotationTypes.Token)
            return md

        def _annotate(self, mmif: Mmif, **params: Any) -> Mmif:
            raise RuntimeError("toy failure: this app always fails")

    return {"tokenizer": Tokenizer, "counter": Counter, "upper": Upper, "broken": Broken}[kind]()


class _Echo(http.server.BaseHTTPRequestHandler):
    """The plain HTTP app; see the module docstring."""

    protocol_version = "HTTP/1.1"
    flaky = itertools.count()
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "text/plain", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/version"):
            self._answer(200, b"echo-2.1", X_App_Version="echo-2.1")
        else:
            self._answer(404, b"not here")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Authorization") != "Bearer s3cret":
            self._answer(401, b"missing or wrong token")
            return
        if self.path.startswith("/flaky"):
            with self.lock:
                n = next(self.flaky)
            if n % 2 == 0:
                self._answer(503, b"busy, try again")
                return
        if self.path.startswith("/fail"):
            self._answer(500, b"echo exploded")
            return
        self._answer(200, body.upper(), self.headers.get("Content-Type") or "text/plain")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("app")
    p.add_argument("--port", type=int, default=5001)
    a = p.parse_args()
    if a.app == "echo":
        http.server.ThreadingHTTPServer(("127.0.0.1", a.port), _Echo).serve_forever()
        return
    from clams import Restifier

    server = Restifier(clams_app(a.app), loopback=True, port=a.port, debug=False)
    server.host = "127.0.0.1"  # loopback=True means "localhost", which may resolve to ::1 first
    server.run(threaded=True)


if __name__ == "__main__":
    main()
