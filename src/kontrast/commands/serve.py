"""``kontrast serve INDEX``: the search HTTP API and web page (FastAPI + uvicorn), on loopback by default."""

from __future__ import annotations

import argparse

from .common import add_model_args


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a search index over HTTP (API + web page)",
                              description="HTTP API (/search, /classify, /embed, /thumb/{id}, /health, /docs) and a "
                              "web page at /. Binds 127.0.0.1 unless --host says otherwise. "
                              "--model defaults to the model recorded in the index.")
    p.add_argument("index", metavar="INDEX", help="index folder built by 'kontrast index'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body (413 above)")
    p.add_argument("--no-model-lock", action="store_true",
                   help="let concurrent requests run the model in parallel threads (default: one at a time)")
    p.add_argument("--faiss-threads", type=int, default=1,
                   help="OpenMP threads per FAISS query (1: concurrent requests run side by side; measured faster "
                   "than sharing all cores per query, see benchmarks/search.py)")
    add_model_args(p)
    p.set_defaults(model=None, func=run)


def run(args: argparse.Namespace) -> int:
    import faiss
    import uvicorn

    from ..search.query import Searcher
    from ..search.server import create_app

    faiss.omp_set_num_threads(max(1, args.faiss_threads))
    searcher = Searcher.open(args.index, model=args.model, pretrained=args.pretrained, device=args.device,
                             precision=args.precision, backend=getattr(args, "backend", "torch"),
                             lock=not args.no_model_lock)
    app = create_app(searcher, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"kontrast serve: warning: listening on {args.host}: anyone who can reach it can search the index "
              "and read the indexed images")
    print(f"kontrast serve: http://{args.host}:{args.port}/  (API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
