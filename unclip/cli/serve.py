"""``unclip serve``: the OpenAI-compatible Images API and the web page, on one port."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_pipeline_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on /v1 (default: no key needed)")
    parser.add_argument("--max-queue", type=int, default=16, metavar="N",
                        help="requests in progress at once; more are answered 429 (default 16)")
    parser.add_argument("--max-batch", type=int, default=10, metavar="N",
                        help="images per batch of compatible generations (default 10)")
    parser.add_argument("--steps", nargs="+", type=common.stage_value(int), metavar="[STAGE=]N",
                        help="sampling steps: N for every stage, or STAGE=N (default: the checkpoint's)")
    parser.add_argument("--image-ttl", type=float, default=3600, metavar="SECONDS",
                        help="how long image URLs stay valid (default 3600)")
    parser.add_argument("--image-dir", type=Path, help="folder for URL images (default: a temporary folder)")
    parser.add_argument("--public-url", help="base of returned image URLs (default: the request's host)")
    parser.add_argument("--model-name", help="the model id served (default: the checkpoint folder's name)")
    parser.add_argument("--watermark", action="store_true",
                        help="draw DALL·E 2's five-colour signature in each image's bottom-right corner")
    common.add_precision_argument(parser)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the networks (opt-in): each new batch size compiles on its first "
                             "request, minutes on a small CPU, then samples faster")
    common.add_filter_argument(parser)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unclip.server import create_app
    except ImportError as err:
        raise ValueError(f"the server needs the serve extra ({err.name} is missing): "
                         "pip install 'unclip[serve]'") from None
    from unclip.config import SAMPLED_STAGES as STAGES
    from unclip.pipeline import default_checkpoint
    from unclip.pipeline.inputs import check_count
    from unclip.safety import Blocklist

    check_count("--max-queue", args.max_queue)  # cheap checks before loading anything
    check_count("--max-batch", args.max_batch)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected 0..65535 (0 picks a free one), got {args.port}")
    if args.image_dir is not None:
        common.check_folder(args.image_dir, "--image-dir")
    prompt_filter = Blocklist.from_file(args.blocklist) if args.blocklist else None
    pipe = common.load_pipeline(args)
    if args.compile:
        from unclip.pipeline.compiled import compile_networks

        compile_networks(pipe)
    if args.model_name:
        name = args.model_name
    elif args.random_from:
        name = f"unclip-random-{Path(args.random_from).resolve().name}"
    else:
        name = Path(args.checkpoint or default_checkpoint()).resolve().name
    app = create_app(pipe, api_key=args.api_key, max_queue=args.max_queue, max_batch=args.max_batch,
                     image_ttl_s=args.image_ttl, model_name=name, steps=common.stage_values(args.steps, STAGES),
                     image_dir=args.image_dir, public_url=args.public_url, watermark=args.watermark,
                     prompt_filter=prompt_filter, precision=args.precision)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    try:
        sock = config.bind_socket()  # bound before printing, so that --port 0 prints the port it got
    except SystemExit:
        raise ValueError(f"cannot listen on {args.host}:{args.port} (in use, or not an address here)") from None
    sock.listen(config.backlog)  # connections made from now on wait until uvicorn accepts them
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"unclip serve: model {name!r} at http://{shown}:{port}/ (API base: http://{shown}:{port}/v1)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
